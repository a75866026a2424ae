"""The training demo (python -m cnnops.demo): its network, augmentation, loop and CLI, on a
short run (the full run's accuracy is reported by the demo itself, not asserted here)."""
import io
import math
import sys

import pytest
import torch

import cnnops
from cnnops.demo import digits as demo


def test_layer_sets_have_the_same_modules():
    names = lambda ns: sorted(k for k in vars(ns) if k != "name")  # noqa: E731
    assert names(demo.CNNOPS_LAYERS) == names(demo.TORCH_LAYERS)
    model = demo.build_model(demo.CNNOPS_LAYERS, width=4)
    types_used = {type(m) for m in model.modules()}
    # the modules cnnops already has are cnnops's, inside the separable block too
    assert {cnnops.nn.Conv2d, cnnops.nn.MaxPool2d, cnnops.nn.GlobalAvgPool2d} <= types_used
    assert torch.nn.Conv2d not in types_used
    sep = model.separable
    assert sep.depthwise.groups == 4 and sep.depthwise.kernel_size == (3, 3) and sep.pointwise.kernel_size == (1, 1)
    assert type(model[0]) is demo.Standardize  # input normalisation is the first layer


def test_same_seed_same_network_same_results():
    """The two layer sets build the same network from the same seed, and compute the same
    outputs and gradients (float64), so --compare compares like with like."""
    nets = []
    for layers in (demo.CNNOPS_LAYERS, demo.TORCH_LAYERS):
        torch.manual_seed(3)
        nets.append(demo.build_model(layers, mean=4.0, std=6.0, width=8, dropout=0.0).double())
    a, b = (n.state_dict() for n in nets)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64) * 16
    y = torch.tensor([0, 3, 9, 1, 3])
    for net in nets:
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}")
    for n in nets:
        n.eval()
    torch.testing.assert_close(nets[0](x), nets[1](x))


def test_random_shift_moves_whole_images():
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 4] = 1.0
    x[:, 0, 0, 0] = 2.0  # a corner pixel falls off for some shifts, never wraps around
    out = demo.random_shift(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    moves = set()
    for img in out[:, 0]:
        (r, c), = (img == 1.0).nonzero().tolist()
        assert abs(r - 3) <= 1 and abs(c - 4) <= 1
        moves.add((r - 3, c - 4))
        corner = (img == 2.0).nonzero().tolist()
        assert corner in ([], [[r - 3, c - 4]])
        assert img.count_nonzero() == 1 + len(corner)
    assert len(moves) == 9  # all shifts occur in 64 draws
    assert demo.random_shift(x, 0, None) is x


def test_progress_bar():
    buf = io.StringIO()
    bar = demo.ProgressBar(4, "e1 ", buf, width=8, live=False)
    bar.update(2, " loss 1")
    assert buf.getvalue() == ""  # not a terminal: no redraws
    bar.finish(" done")
    assert buf.getvalue() == "e1 [########] 4/4 done\n"
    buf = io.StringIO()
    bar = demo.ProgressBar(4, "", buf, width=4, live=True)
    bar.update(1, " long postfix")
    bar.finish()
    assert buf.getvalue() == "\r[#...] 1/4 long postfix" + "\r[####] 4/4" + " " * 13 + "\n"


def test_early_stopping_keeps_the_best_epoch():
    # lr 0: the validation result never improves after epoch 1, so training stops after
    # `patience` more epochs and keeps epoch 1.
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(n, 1, 8, 8, generator=g) for n in (40, 20, 20)]
    ys = [torch.randint(0, 10, (n,), generator=g) for n in (40, 20, 20)]
    data = dict(zip(("train", "val", "test"), zip(xs, ys)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    out = io.StringIO()
    h = demo.train(model, data, "t", epochs=10, batch_size=16, lr=0.0, patience=2, out=out, live=False)
    assert [r["epoch"] for r in h.epochs] == [1, 2, 3] and h.best_epoch == 1 and h.stopped_early
    assert "early stop" in out.getvalue()
    assert 0.0 <= h.test_acc <= 1.0 and math.isfinite(h.test_loss)


def test_missing_optional_dependencies(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    assert demo.main(["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs scikit-learn" in err and "pip install scikit-learn matplotlib" in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.main(["--epochs", "1", "--compare"]) == 2
    assert "needs matplotlib" in capsys.readouterr().err  # said before any training
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])


def test_short_demo_run(tmp_path):
    pytest.importorskip("sklearn")
    try:
        import matplotlib  # noqa: F401
        compare = True
    except ImportError:  # the cnnops run alone
        compare = False
    png = tmp_path / "curves.png"
    out = io.StringIO()
    args = demo.parse_args(["--epochs", "1", "--subset", "300", "--width", "8", "--live", "off"]
                           + (["--compare", "--out", str(png)] if compare else []))
    threads = torch.get_num_threads()
    hists = demo.run(args, out)
    assert torch.get_num_threads() == threads
    text = out.getvalue()
    assert "train 195, val 45, test 60 images" in text
    assert "cnnops epoch  1/1 [####################] 4/4" in text
    assert [h.label for h in hists] == (["cnnops", "torch"] if compare else ["cnnops"])
    for h in hists:
        assert len(h.epochs) == 1 and h.best_epoch == 1
        r = h.epochs[0]
        assert math.isfinite(r["train_loss"]) and 0 <= r["val_acc"] <= 1 and 0 <= h.test_acc <= 1
    if compare:
        assert "same initial weights for both networks: yes" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
