"""The study's claims, generated from its numbers with the wording rules of
:mod:`sweeps.reporting.wording`: ``claims.md`` (the plan's status, the lead sentence, one
sentence per iso-cost axis, one per planned contrast), and, when the sweep has an analysis plan
with contrasts, ``contrasts.csv`` and ``contrasts.md``. The README's results section quotes the
blocks of ``claims.md`` between its ``<!-- claims:<sweep>:<block> -->`` markers verbatim
(tests/test_claims.py checks it)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from odconv.atomic_files import atomic_output
from odconv.spec import parse_conv_spec

from ..definition import SweepDef
from ..layout import SweepLayout, report_layout
from .formats import write_or_remove
from .isocost import IsoCostResult
from .plan_status import PlanStatus
from .wording import axis_sentence, contrast_sentence, contrast_variants, detects, family_sentence, study_lead

LEAD, AXES_BLOCK, CONTRASTS_BLOCK = "lead", "axes", "contrasts"
FAMILY_BLOCK = "family-{}"   # one block per conv family: family-kw, family-odconv, ...
QUOTE_MARKER = re.compile(r"<!-- claims:([A-Za-z0-9_.-]+):([a-z0-9_-]+) -->")


class MissingClaimsBlock(ValueError):
    """A document quotes a block that no ``results/<sweep>/claims.md`` has."""


def block(name: str, lines: list[str]) -> list[str]:
    """Lines between the markers a README quotes: ``<!-- claims:<sweep>:<block> -->`` ...
    ``<!-- /claims:<sweep>:<block> -->`` (``name``: ``<sweep>:<block>``)."""
    return [f"<!-- claims:{name} -->", *lines, f"<!-- /claims:{name} -->", ""]


def read_block(text: str, name: str) -> str | None:
    """The text between the markers of block ``name`` (``<sweep>:<block>``) in ``text``; None
    when it has none."""
    start, end = f"<!-- claims:{name} -->", f"<!-- /claims:{name} -->"
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def quoted_blocks(text: str) -> list[str]:
    """The blocks ``text`` quotes, in order, as ``<sweep>:<block>`` names."""
    return [f"{sweep}:{name}" for sweep, name in QUOTE_MARKER.findall(text)]


def requote(text: str, results_root: Path) -> tuple[str, list[str]]:
    """``text`` (a markdown document) with every quoted block replaced by the block of the same
    name in ``<results_root>/<sweep>/claims.md``, and the names of the blocks that changed.
    Raises :class:`MissingClaimsBlock` naming the block, and the blocks that file has, when one
    has no generated source."""
    changed = []
    for name in quoted_blocks(text):
        sweep = name.split(":", 1)[0]
        source = SweepLayout(sweep, results_root).report("claims.md")
        generated_text = source.read_text() if source.exists() else ""
        generated = read_block(generated_text, name)
        if generated is None:
            have = ", ".join(quoted_blocks(generated_text)) or "none"
            raise MissingClaimsBlock(f"block {name!r} is not in {source} (blocks there: {have}; `make results "
                                     f"SWEEP={sweep}` writes it)")
        current = read_block(text, name)
        if current is None:  # an opening marker without its closing one
            raise MissingClaimsBlock(f"block {name!r} has no closing marker <!-- /claims:{name} -->")
        if current != generated:
            start, end = f"<!-- claims:{name} -->", f"<!-- /claims:{name} -->"
            head, rest = text.split(start, 1)
            text = f"{head}{start}\n{generated}\n{end}{rest.split(end, 1)[1]}"
            changed.append(name)
    return text, changed


def quote_file(path: Path, results_root: Path, check: bool = False) -> list[str]:
    """Rewrite the claims blocks the markdown file ``path`` quotes (:func:`requote`), unless
    ``check``; the names of the blocks that differ(ed) from the generated ones."""
    text, changed = requote(path.read_text(), results_root)
    if changed and not check:
        with atomic_output(path) as f:   # an interrupted rewrite leaves the document as it was
            f.write(text)
    return changed


def variant_families(summary: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Each dynamic variant of ``summary`` (its ``variant`` and ``conv`` columns) -> its conv
    family's (key, title), e.g. ``("kw", "KernelWarehouse")``; a spec no installed family parses
    (records read where its package is missing) goes under its leading letters."""
    out = {}
    for variant, conv in zip(summary.get("variant", []), summary.get("conv", [])):
        try:
            family = parse_conv_spec(str(conv)).family
        except ValueError:
            key = re.match(r"[a-z_]*", str(conv).lower()).group(0) or str(conv)
            out[variant] = (key, key)
            continue
        if family.dynamic:
            out[variant] = (family.name, family.title or family.name)
    return out


def family_blocks(sweep_name: str, iso: IsoCostResult, families: dict[str, tuple[str, str]]) -> list[str]:
    """One block per conv family with variants on the iso-cost axes (:func:`family_sentence`),
    in the order the families first appear."""
    lines: list[str] = []
    for key, title in dict.fromkeys(families.values()):
        mine = [v for v, f in families.items() if f[0] == key]
        per_axis = {a: f.table[f.table["variant"].isin(mine)] for a, f in iso.axes.items()}
        per_axis = {a: t for a, t in per_axis.items() if len(t)}
        if per_axis:
            lines += block(f"{sweep_name}:{FAMILY_BLOCK.format(key)}", [family_sentence(title, per_axis)])
    return lines


def claims_markdown(sweep: SweepDef, status: PlanStatus, iso: IsoCostResult | None,
                    contrasts: pd.DataFrame | None, families: dict[str, tuple[str, str]] | None = None) -> str:
    lines = [f"# {sweep.name}: what its numbers say", "",
             "Every sentence here is generated from the tables beside it (`sweeps/reporting/wording.py`): "
             "*above* / *below* only where the adjusted p-value is under 5%, otherwise *not distinguishable*, "
             "with the smallest effect the design detects; counts are computed.", ""]
    lead = [f"**{status.label.capitalize()}.** {status.reason[0].upper() + status.reason[1:]}."]
    if status.later_changes:
        lead.append("Plan changes after covered trials had finished: " + "; ".join(
            f"{p.hash} at {p.recorded_at}" for p in status.later_changes) + ".")
    if iso is not None and iso.axes:
        lead.append(study_lead({a: f.table for a, f in iso.axes.items()}))
    if contrasts is not None and len(contrasts):
        primary = contrasts[contrasts["role"] == "primary"]
        lead += [contrast_sentence(r) for _, r in primary.iterrows()]
    lines += ["## Lead", ""] + block(f"{sweep.name}:{LEAD}", lead)
    if iso is not None and iso.axes:
        lines += ["## Each cost axis", ""] + block(f"{sweep.name}:{AXES_BLOCK}", [f"- {axis_sentence(a, f.table)}"
                                                               for a, f in iso.axes.items()])
    if iso is not None and iso.axes and families:
        lines += ["## Each conv family", ""] + family_blocks(sweep.name, iso, families)
    if contrasts is not None and len(contrasts):
        lines += ["## Planned contrasts", ""] + block(f"{sweep.name}:{CONTRASTS_BLOCK}", [f"- {contrast_sentence(r)}"
                                                                          for _, r in contrasts.iterrows()])
    return "\n".join(lines)


def contrasts_markdown(sweep: SweepDef, status: PlanStatus, contrasts: pd.DataFrame) -> str:
    plan = sweep.plan()
    assert plan is not None
    t = contrasts
    table = pd.DataFrame({
        "contrast": t["contrast"], "role": t["role"], "axis": t["axis"],
        "variants": [", ".join(f"`{n}`" for n in contrast_variants(v)) for v in t["variants"]], "against": t["against"],
        "estimate [CI] (pp)": [f"{e:+.2f} [{lo:+.2f}, {hi:+.2f}]" if pd.notna(e) else "n/a"
                               for e, lo, hi in zip(t["estimate"], t["ci_low"], t["ci_high"])],
        "p": [f"{p:.3f}" if pd.notna(p) else "n/a" for p in t["p"]],
        "p adjusted": [f"{p:.3f}" if pd.notna(p) else "n/a" for p in t["p_adjusted"]],
        "MDD (pp)": [f"{m:.2f}" if pd.notna(m) else "n/a" for m in t["mdd"]],
        "seeds": t["n_seeds"].astype(str),
        "results / planned": [f"{int(n)}/{int(m)}" if pd.notna(m) else "n/a"
                              for n, m in zip(t["n_results"], t["n_results_planned"])]})
    return "\n".join([
        f"# {sweep.name}: the planned contrasts", "",
        f"**{status.label.capitalize()}.** {status.reason[0].upper() + status.reason[1:]}. "
        f"{status.under_plan} of the {status.covered} results the plan covers ran under it.", "",
        f"Plan {status.plan_hash}: seeds {plan.seeds}; frontier fitted to the static rungs "
        + (", ".join(f"{w:g}" for w in plan.frontier_widths) if plan.frontier_widths else "of the ladder")
        + f", order {plan.frontier_order or 'by rule'}; seed as a block: {'yes' if plan.seed_block else 'no'}; "
        f"two-sided, alpha {plan.alpha:g}; {plan.correction} within each role's family "
        f"(primary, secondary); primary axes: {', '.join(plan.primary_axes) or 'none named'}.", "",
        "Each contrast: the mean Δ of its variants (a pooled mean when several) against the static frontier at "
        "equal cost (or against another variant), from one least-squares fit per axis of the frontier, the "
        f"seed block and one term per variant; interval at {1 - plan.alpha:.0%}; MDD: the smallest true "
        f"effect the design detects with 80% power ({detects(t['mdd'])}).", "",
        table.to_markdown(index=False, disable_numparse=True), "",
        *[f"- {contrast_sentence(r)}" for _, r in t.iterrows()], ""])


def write_claims(out_dir: Path, sweep: SweepDef, status: PlanStatus, iso: IsoCostResult | None,
                 contrasts: pd.DataFrame | None, families: dict[str, tuple[str, str]] | None = None) -> list[Path]:
    """Write ``claims.md`` and (with planned contrasts) ``contrasts.csv|md``; remove stale ones.
    ``families``: :func:`variant_families` of the summary, for one block per conv family."""
    files = report_layout(out_dir)
    claims = files.report("claims.md")
    claims.write_text(claims_markdown(sweep, status, iso, contrasts, families))
    has = contrasts is not None and len(contrasts) > 0
    written = [claims, *write_or_remove(contrasts if has else pd.DataFrame(), files.report("contrasts.csv"), has)]
    md = files.report("contrasts.md")
    if has:
        md.write_text(contrasts_markdown(sweep, status, contrasts))
        written.append(md)
    else:
        md.unlink(missing_ok=True)
    return written
