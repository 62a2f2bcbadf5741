"""The README's results section says what the generated files say: each block it quotes between
``<!-- claims:<sweep>:<block> -->`` markers is that block of ``results/<sweep>/claims.md``
verbatim; every other figure of the section is found in the study's generated tables (or, for a
design figure stated before the runs, in its sweep file); and ``claims.md`` is what
``make results`` writes from the committed records today."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from sweeps.cli import main as sweep_main
from sweeps.reporting.aggregate import aggregate
from sweeps.reporting.claims_report import MissingClaimsBlock, read_block, requote, variant_families

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- claims:([A-Za-z0-9_.-]+):([a-z0-9_-]+) -->")
DECIMAL = re.compile(r"(?<![\w.])[+\-−]?\d+\.\d+")
STUDIES = ("cifar10_factorial", "cifar10_confirm")


def results_section(readme: str) -> str:
    return readme.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]


def quoted_blocks(text: str) -> list[tuple[str, str]]:
    return MARKER.findall(text)


def strip_blocks(text: str) -> str:
    for sweep, name in quoted_blocks(text):
        start, end = f"<!-- claims:{sweep}:{name} -->", f"<!-- /claims:{sweep}:{name} -->"
        text = text.split(start, 1)[0] + text.split(end, 1)[1]
    return text


def figures(text: str) -> set[str]:
    return {m.replace("−", "-").lstrip("+-") for m in DECIMAL.findall(text)}


def generated_text(study: str) -> str:
    """What a figure of the README may come from: the study's generated markdown, and its sweep
    file (the design's figures, fixed before the runs)."""
    folder = ROOT / "results" / study
    parts = [p.read_text() for p in sorted(folder.glob("*.md")) if p.name != "README.md"]
    parts += [p.read_text() for p in sorted(folder.glob("bench/*.md"))]
    sweep_file = ROOT / "sweeps" / f"{study}.yaml"
    if sweep_file.exists():
        parts.append(sweep_file.read_text())
    return "\n".join(parts)


def test_every_quoted_block_is_the_generated_one():
    section = results_section((ROOT / "README.md").read_text())
    blocks = quoted_blocks(section)
    assert ("cifar10_factorial", "lead") in blocks
    for sweep, name in blocks:
        generated = read_block((ROOT / "results" / sweep / "claims.md").read_text(), f"{sweep}:{name}")
        assert generated is not None, f"results/{sweep}/claims.md has no block {name}"
        assert read_block(section, f"{sweep}:{name}") == generated, f"README's {sweep}:{name} differs"


RESULTS_LINK = re.compile(r"\]\((results/[^)#\s]+)")


def paragraph_sources(paragraph: str) -> str:
    """What a figure of one README paragraph may come from: the generated files (and sweep file) of
    each study it links, and each results document it links. Per paragraph, so that a mistyped
    figure is not found by chance among every study's numbers."""
    links = RESULTS_LINK.findall(paragraph)
    studies = {link.split("/")[1] for link in links if link.split("/")[1] in STUDIES}
    docs = [ROOT / link for link in links if link.endswith(".md") and link.split("/")[1] not in STUDIES]
    return "\n".join([generated_text(s) for s in sorted(studies)] + [d.read_text() for d in docs])


def unsourced_figures(section: str) -> list[str]:
    missing = set()
    for paragraph in strip_blocks(section).split("\n\n"):
        missing |= figures(paragraph) - figures(paragraph_sources(paragraph))
    return sorted(missing)


def test_every_other_figure_of_the_results_section_is_in_the_files_its_paragraph_links():
    missing = unsourced_figures(results_section((ROOT / "README.md").read_text()))
    assert not missing, f"figures in the README's results section found in no file their paragraph links: {missing}"


def test_every_figure_of_a_study_readings_result_is_in_the_generated_files():
    reading = (ROOT / "results" / "cifar10_confirm" / "README.md").read_text()
    result = strip_blocks(reading.split("\n## Result\n", 1)[1])
    # its own study's files, and the factorial's contrasts (the hint it tests): few enough sources
    # that a mistyped figure is unlikely to be found by chance
    sources = figures(generated_text("cifar10_confirm") + (ROOT / "results/cifar10_factorial/contrasts.md").read_text())
    assert figures(result), "the reading's Result section states no figure"
    missing = sorted(figures(result) - sources)
    assert not missing, f"figures in cifar10_confirm's Result section found in no generated file: {missing}"


def test_the_figure_check_catches_a_typed_figure():
    typed = "At equal MACs ([the study](results/cifar10_factorial/README.md)) the hint is +31.41 pp."
    assert unsourced_figures(typed) == ["31.41"]
    # 1.83 is somewhere in the factorial's files, but not in the benchmark document this paragraph links
    assert unsourced_figures("Costs 1.83x ([kw_widths.md](results/bench/kw_widths.md)).") == ["1.83"]
    assert unsourced_figures("A figure, 0.73 pp, with no linked source.") == ["0.73"]


@pytest.mark.parametrize("sweep", STUDIES)
def test_claims_are_what_make_results_writes_from_the_committed_records(tmp_path, sweep):
    study = ROOT / "results" / sweep
    if not (study / "trials").is_dir():
        pytest.fail(f"the committed records of {sweep} are missing")
    shutil.copytree(study / "trials", tmp_path / sweep / "trials")
    shutil.copy(study / "sweep.json", tmp_path / sweep / "sweep.json")
    # costs: the study's own benchmark, else the suite's (results/bench), as `make results` reads them
    bench = study / "bench" if (study / "bench").is_dir() else ROOT / "results" / "bench"
    shutil.copytree(bench, tmp_path / sweep / "bench" if bench.parent == study else tmp_path / "bench")
    if (study / "analysis_plans.json").exists():
        shutil.copy(study / "analysis_plans.json", tmp_path / sweep / "analysis_plans.json")
    aggregate(sweep, tmp_path)
    names = ["claims.md", "isocost.md", "isocost.csv", "summary.csv", "summary.md"]
    for name in names + [n for n in ("contrasts.csv", "contrasts.md") if (study / n).exists()]:
        written = (tmp_path / sweep / name).read_text().replace(str(tmp_path), "results")
        assert written == (study / name).read_text(), name


def documents_quoting_claims() -> list[Path]:
    docs = [ROOT / "README.md", *sorted((ROOT / "results").glob("*/README.md"))]
    return [d for d in docs if MARKER.search(d.read_text())]


def test_the_study_readings_quote_their_claims_too():
    assert ROOT / "results" / "cifar10_confirm" / "README.md" in documents_quoting_claims()


@pytest.mark.parametrize("doc", documents_quoting_claims(), ids=lambda d: str(d.relative_to(ROOT)))
def test_every_document_quotes_the_generated_blocks(doc):
    assert sweep_main(["quote", str(doc), "--check", "--results-root", str(ROOT / "results")]) == 0


def _study_with_claims(root: Path, sweep: str, blocks: dict[str, str]) -> None:
    folder = root / sweep
    folder.mkdir(parents=True)
    folder.joinpath("claims.md").write_text("# generated\n\n" + "\n".join(
        f"<!-- claims:{sweep}:{name} -->\n{body}\n<!-- /claims:{sweep}:{name} -->\n" for name, body in blocks.items()))


def test_quote_rewrites_stale_blocks_and_keeps_the_rest(tmp_path):
    _study_with_claims(tmp_path / "results", "s", {"lead": "New lead, 1.25 pp.", "axes": "- axis one\n- axis two"})
    doc = tmp_path / "doc.md"
    doc.write_text("Intro 0.5.\n\n<!-- claims:s:lead -->\nOld lead, 9.99 pp.\n<!-- /claims:s:lead -->\n\nMiddle.\n\n"
                   "<!-- claims:s:axes -->\n- axis one\n- axis two\n<!-- /claims:s:axes -->\nEnd.\n")
    before = doc.read_text()
    assert sweep_main(["quote", str(doc), "--check", "--results-root", str(tmp_path / "results")]) == 1
    assert doc.read_text() == before  # --check changes nothing
    assert sweep_main(["quote", str(doc), "--results-root", str(tmp_path / "results")]) == 0
    assert doc.read_text() == before.replace("Old lead, 9.99 pp.", "New lead, 1.25 pp.")
    assert sweep_main(["quote", str(doc), "--check", "--results-root", str(tmp_path / "results")]) == 0


def test_quote_names_a_block_no_study_generates(tmp_path, capsys):
    _study_with_claims(tmp_path / "results", "s", {"lead": "Lead."})
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- claims:s:axes -->\nx\n<!-- /claims:s:axes -->\n")
    with pytest.raises(MissingClaimsBlock, match=r"'s:axes'.*blocks there: s:lead"):
        requote(doc.read_text(), tmp_path / "results")
    assert sweep_main(["quote", str(doc), "--results-root", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "s:axes" in err



def test_variant_families_names_each_dynamic_variant_by_its_family():
    summary = pd.DataFrame({"variant": ["static", "wide", "kw1x", "odconv4x", "mine"],
                            "conv": ["static", "static", "kw1x", "odconv4x", "mystery3x"]})
    assert variant_families(summary) == {"kw1x": ("kw", "KernelWarehouse"), "odconv4x": ("odconv", "ODConv"),
                                         "mine": ("mystery", "mystery")}  # a family not installed here
