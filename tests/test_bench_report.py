"""Benchmark reports (cnnops/bench/report.py): markdown and PNG, from committed result files
and from a run just measured."""
import glob
import json
import os
import re

import pytest

from cnnops.bench import core, report
from cnnops.bench import conv2d as bench_conv2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_RESULTS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "cpu-*.json")))


def _row(op, case, direction, cnnops_ms, torch_ms, status="ok", correct=True, shape="8x4x8x8"):
    return {"op": op, "case": case, "shape": shape, "dtype": "float32", "direction": direction, "status": status,
            "correct": correct, "cnnops_ms": cnnops_ms, "torch_ms": torch_ms,
            "speedup": (torch_ms / cnnops_ms) if status == "ok" else None}


def _payload():
    rows = [
        _row("conv2d", "a", "forward", 2.0, 1.0),
        _row("conv2d", "a", "forward+backward", 4.0, 2.0),
        _row("conv2d", "b|c", "forward", 1.0, 3.0),
        _row("conv2d", "b|c", "forward+backward", 1.0, 3.0, correct=False),
        _row("pool2d", "max", "forward", 0.5, 5.0),
        _row("pool2d", "max", "forward+backward", None, None, status="error"),
        _row("pool2d", "avg", "forward", None, None, status="unsupported"),
    ]
    return {"device": "Test CPU", "device_type": "cpu", "threads": 2, "torch": "9.9.9", "dtype": "float32",
            "date": "2026-11-26T08:00:00+00:00", "commit": "0123456789abcdef", "cases": rows}


def test_markdown_table_content():
    md = report.markdown([_payload()])
    lines = md.splitlines()
    assert lines[0].startswith("**Test CPU (CPU), 2 threads, torch 9.9.9, float32, 2026-11-26, commit 0123456789")
    header = "| op | shape | dtype | direction | torch ms | cnnops ms | speedup |"
    assert header in lines
    body = [ln for ln in lines if ln.startswith("| ") and ln != header and "---" not in ln]
    assert len(body) == 7
    assert "| conv2d | 8x4x8x8 (a) | float32 | forward | 1.000 | 2.000 | 0.50x |" in body
    assert "| conv2d | 8x4x8x8 (b\\|c) | float32 | forward | 3.000 | 1.000 | 3.00x |" in body  # "|" escaped
    assert any("3.00x (WRONG)" in ln for ln in body)
    assert any(ln.endswith("| error |") for ln in body) and any(ln.endswith("| unsupported |") for ln in body)
    # medians over the correct rows only: forward {0.5, 3, 10} -> 3; forward+backward {0.5} -> 0.5
    assert "Median speedup: forward 3.00x (3 cases); forward+backward 0.50x (1 cases)." in lines
    assert any("2 row(s) failed or did not match torch" in ln for ln in lines)


def test_committed_cpu_results_render():
    assert CPU_RESULTS, "no committed CPU benchmark results"
    results = report.load_results(CPU_RESULTS)
    md = report.markdown(results)
    for meta, path in zip(results, CPU_RESULTS):
        assert meta["source"] == os.path.basename(path)
        assert f"torch {meta['torch']}" in md and meta["date"][:10] in md and f"`{meta['source']}`" in md
        n_ok = sum(1 for r in meta["cases"] if r["status"] == "ok")
        # This file's section: from its header line to the next file's (two files may share an
        # op, e.g. the NCHW and the channels_last depthwise runs).
        section = md.split(f"(`{meta['source']}`)", 1)[1].split("\n**", 1)[0]
        rows = [ln for ln in section.splitlines() if ln.startswith(f"| {meta['cases'][0]['op']} |")]
        assert len(rows) == len(meta["cases"]) and n_ok == len(rows)
        first = meta["cases"][0]
        assert f"{first['speedup']:.2f}x" in rows[0]


def test_load_results_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read .*missing.json"):
        report.load_results([str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not JSON"):
        report.load_results([str(bad)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="other.json is not a cnnops.bench result"):
        report.load_results([str(other)])


def test_plot_groups():
    panels = report.plot_groups([_payload()])
    assert [p["title"].split(" - ")[0] for p in panels] == ["conv2d", "pool2d"]
    conv, pool = panels
    assert conv["labels"] == ["a\n8x4x8x8", "b|c\n8x4x8x8"]
    assert conv["speedups"] == {"forward": [0.5, 3.0], "forward+backward": [0.5, None]}  # the wrong row left out
    assert pool["speedups"] == {"forward": [10.0, None]}
    assert pool["busy"] == {"forward": [False, False]}
    busy = _payload()
    busy["cases"][0]["other_cpu_load"] = 0.5
    assert report.plot_groups([busy])[0]["busy"]["forward"] == [True, False]
    md = report.markdown([busy])
    assert "| 1.000 | 2.000 | 0.50x * |" in md and "1 of 7 rows were timed while other processes used" in md


def test_cli_from_json_markdown(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_payload()))
    assert core.main(["--from-json", str(path)]) == 0  # markdown is the default rendering
    out = capsys.readouterr().out
    assert "| op | shape | dtype | direction | torch ms | cnnops ms | speedup |" in out and "`r.json`" in out
    assert core.main(["--from-json", str(path), str(tmp_path / "nope.json"), "--markdown"]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_measured_run_prints_markdown(tmp_path, capsys):
    case = bench_conv2d.conv_case("tiny md", 1, 4, 4, 8, 3, padding=1)
    rc = core.main(["--quick", "--rounds", "1", "--threads", "1", "--no-mallopt", "--busy-retries", "0",
                    "--no-roofline", "--directions", "forward", "--markdown"], cases=[case])
    assert rc == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("| conv2d | ")]
    assert len(line) == 1 and "tiny md" in line[0] and re.search(r"\| \d+\.\d\dx( \*)? \|$", line[0]), line


def test_plot_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sub" / "speedup.png"
    assert report.plot([_payload()], str(png)) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the committed CPU results, through the CLI
    png2 = tmp_path / "cpu.png"
    assert core.main(["--from-json", *CPU_RESULTS, "--plot", str(png2)]) == 0
    assert png2.stat().st_size > 10_000
    assert capsys.readouterr().out == ""  # --plot alone prints no table
    empty = dict(_payload(), cases=[_row("conv2d", "x", "forward", None, None, status="error")])
    with pytest.raises(ValueError, match="no correct benchmark rows"):
        report.plot([empty], str(tmp_path / "none.png"))
