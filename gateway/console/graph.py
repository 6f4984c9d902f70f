"""A journey document (the public shape GET /v1/journeys/{key} returns) as nodes and labelled edges.

The edges follow the document's documented flow rules (docs/RULES-ENGINE.md, the playbook's README):
a step falls through to the next one unless it says `next` or ends the path; waits on an event leave by
`on_event`/`on_timeout`, branches by each rule's `next` and `default`, splits by each variant's `next`,
jumps by `to`. The gateway reads the document as any API client would; it does not import the service.
Positions are not computed here: the page lays the graph out with dagre (vendored under static/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.shapes import TypedDict
from nurture.jsontypes import JsonMapping, JsonValue

TERMINAL = frozenset({"end", "goal", "exit", "jump"})  # never fall through to the next step


@dataclass
class Node:
    id: str
    type: str
    stage: str
    label: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Edge:
    source: str
    target: str
    label: str
    share: float | None = None  # of the source's leads that took this edge, when the counts tell


def _edges(step: JsonMapping, following: str | None) -> list[tuple[str, str]]:
    kind = step.get("type")
    out: list[tuple[JsonValue, str]] = []  # (the target as the document has it, the label)
    if kind == "wait" and step.get("event") is not None:
        out += [(step.get("on_event"), "event"), (step.get("on_timeout"), "timeout")]
    elif kind == "branch":
        out += [(r.get("next"), str(r.get("name"))) for r in step.get("rules") or [] if isinstance(r, Mapping)]
        out.append((step.get("default"), "default"))
    elif kind == "split":
        out += [(v.get("next"), f"variant {v.get('name')}") for v in step.get("variants") or []
                if isinstance(v, Mapping)]
    elif kind == "jump":
        out.append((step.get("to"), ""))
    elif step.get("next") is not None:
        out.append((step.get("next"), ""))
    elif kind not in TERMINAL and following is not None:
        out.append((following, ""))
    if kind == "wait" and step.get("if_past") is not None:
        out.append((step.get("if_past"), "if past"))
    return [(str(t), label) for t, label in out if isinstance(t, str) and t]


def _label(step: JsonMapping) -> str:
    kind = str(step.get("type", ""))
    if kind == "send":
        return str(step.get("subject") or step.get("template") or "")
    if kind == "wait":
        delay = step.get("delay") or (step.get("timeout") or {}).get("delay")
        return f"wait {delay}" if delay else "wait"
    return str(step.get("name") or "")


def build(document: JsonMapping, analytics: JsonMapping,
          waiting: Mapping[str, int] | None = None) -> tuple[list[Node], list[Edge]]:
    """Nodes with the analytics report's counts for their step (0 where the report has none) and the
    leads waiting there now, and edges with the share of leads each took where the target's entries
    come only from this source."""
    raw = [s for s in document.get("steps") or [] if isinstance(s, Mapping) and isinstance(s.get("id"), str)]
    counts = {str(s.get("step")): s for s in analytics.get("steps") or [] if isinstance(s, Mapping)}
    nodes: list[Node] = []
    edges: list[Edge] = []
    for i, step in enumerate(raw):
        sid = str(step["id"])
        got = counts.get(sid, {})
        tally = {k: int(v) for k, v in got.items() if k != "step" and isinstance(v, int)}
        tally["waiting"] = int((waiting or {}).get(sid, 0))
        nodes.append(Node(id=sid, type=str(step.get("type", "")), stage=str(step.get("stage") or ""),
                          label=_label(step), counts=tally))
        following = str(raw[i + 1]["id"]) if i + 1 < len(raw) else None
        edges += [Edge(sid, target, label) for target, label in _edges(step, following)]
    known = {n.id for n in nodes}
    edges = [e for e in edges if e.target in known]
    by_id = {n.id: n for n in nodes}
    sources: dict[str, set[str]] = {}
    for e in edges:
        sources.setdefault(e.target, set()).add(e.source)
    for e in edges:
        # A share is exact only when every entry into the target came through this edge.
        entered = by_id[e.source].counts.get("entered", 0)
        if len(raw) and entered and sources[e.target] == {e.source} and by_id[e.source].type in ("branch", "split",
                                                                                                  "wait"):
            e.share = round(by_id[e.target].counts.get("entered", 0) / entered, 4)
    return nodes, edges


class NodeView(TypedDict):
    id: str
    type: str
    stage: str
    label: str


class EdgeView(TypedDict):
    source: str
    target: str
    label: str
    share: float | None


class Layout(TypedDict):
    nodes: list[NodeView]
    edges: list[EdgeView]


def layout(nodes: list[Node], edges: list[Edge]) -> Layout:
    """What the page's script lays out with dagre: node ids (with type, stage and label, for a graph
    the script draws itself, as the draft's while editing) and the labelled edges."""
    return {"nodes": [{"id": n.id, "type": n.type, "stage": n.stage, "label": n.label} for n in nodes],
            "edges": [{"source": e.source, "target": e.target, "label": e.label, "share": e.share} for e in edges]}
