"""A workflow's request parameters: one small class per kind, each applying its value to a graph.

- ValueParam sets its value on every target input ("<node>.<input>").
- ImagesParam takes a list of image references (already turned into LoadImage values), one per
  target, or any number when `chain` names the node through which extra images are copied and
  chained (reference images of an edit workflow).
- SchedulerParam swaps the `swap` node (a sigma schedule such as Flux2Scheduler) for
  BasicScheduler running the named scheduler.

Every class keeps the JSON Schema that validates its request field and says what it sets
(`describe`), so GET /api/workflows/<name> is a form a client can build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from api.graphs import edit as g

Target = tuple[str, str]  # (node_id, input name)


@dataclass
class Param:
    """One request field and the node inputs it sets."""

    kind: ClassVar[str] = "value"
    # Parameters are applied in this order; fixed values come after stage 0 (plain values).
    stage: ClassVar[int] = 0

    name: str
    schema: dict
    targets: list[Target]
    default: Any = None
    required: bool = False
    random: bool = False
    description: str = ""
    setting: str | None = None
    source: str = "manifest"

    def apply(self, graph: dict, value: Any) -> None:
        """Set `value` into `graph` (a copy the caller owns)."""
        raise NotImplementedError

    def describe(self) -> dict:
        out = {"name": self.name, **self.schema, "required": self.required}
        if self.random:
            out["default"] = None
            out["random_when_missing"] = True
        elif self.default is not None:
            out["default"] = self.default
        out["description"] = self.description
        out["sets"] = [f"{node}.{inp}" for node, inp in self.targets]
        if self.kind != "value":
            out["kind"] = self.kind
        out.update(self._describe_extra())
        if self.setting:
            out["default_from_setting"] = self.setting
        out["source"] = self.source
        return out

    def _describe_extra(self) -> dict:
        return {}


@dataclass
class ValueParam(Param):
    """A plain value (text, number, boolean) set on each target input."""

    def apply(self, graph: dict, value: Any) -> None:
        for node_id, input_name in self.targets:
            graph[node_id]["inputs"][input_name] = value


@dataclass
class ImagesParam(Param):
    """Input images: the first ones into the targets, the rest into chained copies."""

    kind: ClassVar[str] = "images"
    stage: ClassVar[int] = 2

    chain: Target | None = None

    def apply(self, graph: dict, value: Any) -> None:
        images = list(value or [])
        for (node_id, input_name), image in zip(self.targets, images, strict=False):
            graph[node_id]["inputs"][input_name] = image
        extra = images[len(self.targets) :]
        if not extra or self.chain is None:
            return
        start, start_input = self.targets[-1]
        end, chain_input = self.chain
        starts = g.chain_copies(graph, start, end, chain_input, len(extra))
        for node_id, image in zip(starts, extra, strict=True):
            graph[node_id]["inputs"][start_input] = image

    def _describe_extra(self) -> dict:
        return {"chained_through": f"{self.chain[0]}.{self.chain[1]}"} if self.chain else {}


@dataclass
class SchedulerParam(Param):
    """A scheduler name: swaps the sigma node for BasicScheduler when a request names one."""

    kind: ClassVar[str] = "scheduler"
    stage: ClassVar[int] = 3

    swap: tuple[str, Target] | None = None  # (node to replace, where the MODEL comes from)

    def apply(self, graph: dict, value: Any) -> None:
        if value and self.swap is not None:
            node_id, model_from = self.swap
            g.swap_scheduler(graph, node_id, model_from, value)

    def _describe_extra(self) -> dict:
        if self.swap is None:
            return {}
        node_id, (model_node, model_input) = self.swap
        return {"swaps_node": node_id, "model_from": f"{model_node}.{model_input}"}


KINDS: dict[str, type[Param]] = {cls.kind: cls for cls in (ValueParam, ImagesParam, SchedulerParam)}
