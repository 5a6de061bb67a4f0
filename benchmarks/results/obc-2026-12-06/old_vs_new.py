"""Old (HEAD~4 spade/obc.py) against new obc on the first 16 rows of the big Lite0 layers, uniform 0.9, float32."""
import importlib.util, sys, time, torch
sys.path.insert(0, "/work/wt-obc")
torch.set_num_threads(1)
import spade.obc as new
spec = importlib.util.spec_from_file_location("old_obc", "/tmp/obc/old_obc.py"); old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
s = torch.load("/tmp/obc/lite0_stats.pt")
print(f"{'layer':<22}{'rows':>5}{'old err':>10}{'new err':>10}{'ratio':>8}{'mask diff':>10}{'old cpu s':>10}{'new cpu s':>10}")
for name in ["blocks.5.0.conv_pwl", "blocks.5.1.conv_pwl", "blocks.5.3.conv_pwl", "blocks.6.0.conv_pwl", "conv_head", "classifier"]:
    w, h, _ = s[name]; W = w.reshape(w.shape[0], -1).float()[:16]; H = h[0]
    out = {}
    for label, mod in (("old", old), ("new", new)):
        c = time.process_time()
        ((sw, m),) = mod.prune_rows_obc(W, H, [0.9], 0.01)
        t = time.process_time() - c
        delta = (sw.double() - W.double())
        err = float(((delta @ H.double()) * delta).sum() / ((W.double() @ H.double()) * W.double()).sum())
        out[label] = (err, m, t)
    print(f"{name:<22}{16:>5}{out['old'][0]:>10.5f}{out['new'][0]:>10.5f}{out['new'][0] / max(out['old'][0], 1e-30):>8.4f}"
          f"{(out['old'][1] != out['new'][1]).float().mean().item():>10.4f}{out['old'][2]:>10.2f}{out['new'][2]:>10.2f}", flush=True)
