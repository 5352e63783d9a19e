"""`stepscope peaks`: the matmul peaks measured on this node, MFU's measured denominator."""

from __future__ import annotations

import math

import click

from stepscope.orchestrator.output import output_options, write_rows

PEAK_COLUMNS = ["host", "device", "uuid", "precision", "torch", "conditions", "measured_at", "age_days", "state",
                "tflops", "min_tflops", "max_tflops", "spread_pct", "samples"]


@click.command()
@click.option("--refresh", is_flag=True, help="Measure the peaks on this node again and show the new entries.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="With --refresh: the device to measure (default: cuda where torch sees one, else cpu).")
@click.option("--precision", "precisions", multiple=True, metavar="P",
              type=click.Choice(["fp32", "tf32", "bf16", "fp16", "amp_bf16", "amp_fp16"]),
              help="With --refresh: a precision to measure (repeatable; default: fp32, tf32, bf16, fp16).")
@click.option("--clear", is_flag=True, help="Empty the cache: the next trial measures its peak again.")
@output_options
def peaks(refresh: bool, device: str | None, precisions: tuple[str, ...], clear: bool, fmt: str | None,
          max_rows: int | None) -> None:
    """List the matmul peaks measured on this node (MFU's measured_* denominator).

    The cache is $STEPSCOPE_CACHE_DIR/matmul_peaks.json (default ~/.cache/stepscope).
    An entry is `fresh`, `expired` (older than $STEPSCOPE_PEAK_MAX_AGE_DAYS, default 7:
    measured again when next read) or `other_format` (never read). spread_pct is the
    kept batches' (max - min) / median.

    Example:

        stepscope peaks
        stepscope peaks --refresh --device cpu --precision fp32 --precision bf16
        stepscope peaks --clear
    """
    from stepscope.workloads.measure import flop_peaks as pk
    from stepscope.workloads.measure.utilization import peak_cache_dir

    if refresh and clear:
        raise click.UsageError("give --refresh or --clear, not both")
    if (device or precisions) and not refresh:
        raise click.UsageError("--device and --precision go with --refresh")
    folder = peak_cache_dir()
    if clear:
        held = pk.clear_cache(folder)
        click.echo(f"Removed {held} measured peak{'s' if held != 1 else ''} from {folder}.")
        return
    if refresh:
        entries = [pk.CacheEntry(p.key, pk.CACHE_FORMAT, "fresh", p)
                   for p in pk.refresh_peaks(device, precisions or pk.MEASURABLE, folder)]
    else:
        entries = pk.cache_entries(folder)
    write_rows(PEAK_COLUMNS, [[peak_row(e) for e in entries]], fmt, max_rows)


def peak_row(entry) -> list:
    """A cache entry as a row of PEAK_COLUMNS: the key's conditions in one text, rates rounded."""
    key, p = entry.key, entry.peak
    conditions = ", ".join(f"{k}={v}" for k, v in key.items()
                           if k not in ("host", "device", "uuid", "precision", "torch") and v is not None)
    measured = [p.measured_at, round(p.age_s / 86400, 3) if math.isfinite(p.age_s) else None] if p else [None, None]
    rates = ([round(p.tflops, 4), round(p.min_tflops, 4), round(p.max_tflops, 4), round(100 * p.spread, 1), p.samples]
             if p else [None] * 5)
    return [key.get("host"), key.get("device"), key.get("uuid"), key.get("precision"), key.get("torch"),
            conditions or None, *measured, entry.state, *rates]
