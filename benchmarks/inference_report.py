"""The inference benchmark's tables, as Markdown (what the README's inference-speed section holds)."""

from __future__ import annotations


def report(results: dict) -> str:
    """The machine, the plan, the network per engine and precision, the whole commands and the memory check."""
    peaks = results["peak_gflops"]
    plan = results["plan"]
    lines = [
        f"CPU: {results['cpu']}, {results['isa']}, {results['threads']} torch threads; matrix-product peak "
        f"{peaks['fp32']:.0f} GFLOP/s fp32, {peaks['bf16']:.0f} GFLOP/s bf16.",
        f"Network: nnU-Net's 3d_fullres plan (nnU-Net's own planner: {results['nnunet_plan']}): patch "
        f"{'×'.join(map(str, plan['patch_size']))}, spacing {'×'.join(map(str, plan['spacing_zyx']))} mm (z y x), "
        f"features {'…'.join(map(str, plan['features'][::len(plan['features']) - 1]))}, strides {plan['strides']}.",
    ]
    rows = results["network"]
    if rows:
        lines += ["", f"One window ({rows[0]['gflop_per_window']:.0f} GFLOP), median (range) over the repetitions:", "",
                  "| engine | precision | s / window | GFLOP/s | of its peak | foreground agreement | min Dice |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            median, low, high = r["s_per_window"]
            lines.append(f"| {r['engine']} | {r['precision']} | {median:.2f} ({low:.2f}–{high:.2f}) | "
                         f"{r['gflops']:.0f} | {100 * r['of_peak']:.0f} % | {100 * r['foreground_agreement']:.2f} % | "
                         f"{r['min_dice']:.4f} |")  # fmt: skip
    commands = results.get("commands")
    if commands:
        nnunet = next((c for c in commands if c["contender"] == "nnUNetv2_predict"), None)
        lines += ["", "Whole commands, median (range) wall time:", "",
                  "| contender | windows | wall s | × nnUNetv2_predict | peak RSS GiB | min Dice |",
                  "|---|---|---|---|---|---|"]
        for c in commands:
            median, low, high = c["wall_s"]
            ratio = f"{median / nnunet['wall_s'][0]:.2f}" if nnunet else "—"
            dice = "—" if c["min_dice"] is None else f"{c['min_dice']:.4f}"
            lines.append(f"| {c['contender']} | {c['windows']} | {median:.1f} ({low:.1f}–{high:.1f}) | {ratio} | "
                         f"{c['peak_rss_gib']:.2f} | {dice} |")
    memory = results.get("memory")
    if memory:
        lines += ["", f"Memory: 512×512×400 CT, 10-class model, {memory['windows']} windows: {memory['wall_s']:.0f} s, "
                      f"peak RSS {memory['peak_rss_gib']:.2f} GiB."]
    return "\n".join(lines)
