"""One colour per scenario, the same in every chart of a comparison.

:func:`scenario_colours` is the only place where scenarios get colours: the bar charts, the
strength-over-time chart, load-displacement curves and the report's tables take their
colours from it, so a scenario keeps its colour from one chart to the next.

The baseline (untreated) is always dark grey. Scenarios take the colour-blind-safe
palette of Okabe & Ito (2008, "Color Universal Design", without black and yellow, which
vanish on white paper) in the order of the comparison, then matplotlib's tab10 colours
that differ from those.
"""
from __future__ import annotations

from typing import Iterable, Mapping

#: colour of the baseline (untreated) run
BASELINE_COLOUR = "#4d4d4d"
#: name of the untreated run in a comparison
BASELINE_NAME = "baseline"
#: scenario colours in order: Okabe-Ito blue, orange, bluish green, reddish purple, vermillion,
#: sky blue, then tab10 brown, olive, cyan, purple
SCENARIO_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9",
                    "#8C564B", "#BCBD22", "#17BECF", "#9467BD")


def scenario_colours(names: Iterable[str], *, baseline: str = BASELINE_NAME) -> dict[str, str]:
    """Colour (``#rrggbb``) of each scenario name, in the order the names first appear.

    Parameters
    ----------
    names : scenario names in the comparison's order (repeats are ignored); pass the
        complete list (e.g. the rows of ``comparison.json``) so that a chart showing only
        some scenarios gives them the same colours as a chart showing all of them
    baseline : name of the untreated run, drawn in :data:`BASELINE_COLOUR` without taking a
        palette slot

    More scenarios than :data:`SCENARIO_PALETTE` holds reuse its colours from the start.
    """
    out: dict[str, str] = {}
    k = 0
    for name in names:
        name = str(name)
        if name in out:
            continue
        if name == baseline:
            out[name] = BASELINE_COLOUR
        else:
            out[name] = SCENARIO_PALETTE[k % len(SCENARIO_PALETTE)]
            k += 1
    return out


def resolve_colours(names: Iterable[str], colours: Mapping[str, str] | None = None) -> dict[str, str]:
    """Colours of ``names``: ``colours`` where it has them, the palette's next colours for the rest.

    ``colours`` is normally :func:`scenario_colours` of the whole comparison (passed by the
    report so that every chart agrees); without it the names are coloured in their order.
    """
    names = [str(n) for n in names]
    if colours is None:
        return scenario_colours(names)
    out = {str(k): v for k, v in colours.items()}
    extra = [n for n in names if n not in out]
    if extra:
        fill = scenario_colours([*out, *extra])
        out.update({n: fill[n] for n in extra})
    return out


__all__ = ["BASELINE_COLOUR", "BASELINE_NAME", "SCENARIO_PALETTE", "scenario_colours", "resolve_colours"]
