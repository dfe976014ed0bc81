"""The graph work: workflows and their manifests, parameters, detection, graph edits and
checks, LoRAs, input images, and the catalog of what a ComfyUI has.

Nothing in this package speaks HTTP: it raises api.exceptions and is called by
api/submission.py, the routes and the startup report.
"""
