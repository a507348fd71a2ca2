"""One-screen summary of a ``bench/quality.py`` JSON report (stdin or a file)."""

from __future__ import annotations

import json
import sys


def summary(report: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    if "skab_valve1" in report:
        s = report["skab_valve1"]
        out.update(skab_f1=s["f1"], skab_far=s["far"], skab_auc_pr=s["auc_pr_pooled"], skab_alerts=s["alerts"],
                   skab_after=s["false_alarms_after_anomaly"])
    if "skab_anomaly_free" in report:
        rows = report["skab_anomaly_free"].values()
        out["free_flag_pct"] = max(r["flagged_pct"] for r in rows)
    if "asd" in report:
        m = report["asd"]["mean"]
        out.update(asd_auc_pr=m["auc_pr"], asd_f1=m["f1"], asd_best_f1=m["best_f1"])
    if "nab" in report:
        out["nab_score"] = report["nab"]["normalised_score"]
        out["nab_longest_run"] = max(f["longest_run"] for f in report["nab"]["files"].values())
    for name, key in (("skab", "skab_valve1"), ("asd", "asd"), ("nab", "nab")):
        if key in report and "alerting" in report[key]:
            a = report[key]["alerting"]
            out.update({f"{name}_false_per_10k": a["false_alerts_per_10k"],
                        f"{name}_early_false": f"{a.get('early_false_alerts', '?')}/{a.get('false_alerts', '?')}",
                        f"{name}_alerted": f"{a['anomalies_alerted']}/{a['labelled_anomalies']}",
                        f"{name}_tail_share": a["tail_share"], f"{name}_f1_of_best": a["f1_of_best"]})
    if "stress" in report:
        st = report["stress"]
        out.update(flat_pct=st["flat"]["flagged_pct_normal"], noise_pct=st["noise"]["flagged_pct_normal"],
                   spike_after=st["spike"]["flags_after_end"], return_recovery=st["step-return"]["recovery_events"],
                   return_regime_changes=st["step-return"]["regime_changes"],
                   step_last_flag=st["step"]["last_flag_after_step"] or 0)
    return out


if __name__ == "__main__":
    data = json.load(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
    print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary(data).items()))
