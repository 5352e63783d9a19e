-- How throughput and memory grow with the batch size: samples/s, step time and peak memory per batch size, against the smallest batch of each series.
--
-- A series is one configuration with the batch size left free: every parameter
-- but batch_size and the seed (shown as a short hash, series), on one GPU type
-- and device. throughput_x is samples/s over the series' smallest batch's;
-- efficiency_pct is throughput_x over the batch-size ratio (100: the step time
-- did not grow at all, the device had idle capacity; it falls as the device
-- fills up). peak_mib is the highest peak of a measured step: CUDA's allocated
-- peak on a GPU, the process's resident peak on a CPU; memory_x compares it
-- with the smallest batch's. step_ms sums the phases' device time (no idle
-- gaps between phases); samples_per_s is over the measured wall time, so on a
-- GPU it also pays for the gaps. Medians over ok trials and measured steps.
--
-- param: sweep = latest  (a sweep_id, 'latest' for the newest sweep, or 'all')
--
-- columns: sweep_id, workload, precision, gpu, device_name, series, batch_size, trials,
--   samples_per_s, step_ms, throughput_x, efficiency_pct, activation_mib, peak_mib, memory_x

with

chosen_trials as (
    select
        *,
        md5(json_merge_patch(params, '{"batch_size": null, "seed": null}'))[:8] as series
    from ok_trials
    where in_sweep(sweep_id, $sweep)
),

chosen_steps as (
    select *
    from measured_steps
    where in_sweep(sweep_id, $sweep)
),

per_step as (
    select
        sweep_id,
        trial_id,
        iteration,
        sum(duration_ms) as step_ms,
        max(coalesce(peak_allocated_bytes, peak_rss_bytes)) as peak_bytes
    from chosen_steps
    group by sweep_id, trial_id, iteration
),

per_trial as (
    select
        sweep_id,
        trial_id,
        median(step_ms) as step_ms,
        max(peak_bytes) as peak_bytes
    from per_step
    group by sweep_id, trial_id
),

-- One row per configuration: a point of its series.
per_batch as (
    select
        t.config,
        t.series,
        count(*) as trials,
        median(t.samples_per_s) as samples_per_s,
        median(p.step_ms) as step_ms,
        median(t.activation_bytes) as activation_bytes,
        max(p.peak_bytes) as peak_bytes
    from chosen_trials as t
    inner join per_trial as p
        on p.sweep_id = t.sweep_id and p.trial_id = t.trial_id
    group by t.config, t.series
),

-- A series is the configuration key with the batch size (and so the config_id)
-- left free: as JSON with those two fields dropped, it compares equal across
-- the series' batch sizes.
with_base as (
    select
        *,
        first_value(config.batch_size) over series_by_batch as base_batch,
        first_value(samples_per_s) over series_by_batch as base_samples_per_s,
        first_value(peak_bytes) over series_by_batch as base_peak_bytes
    from per_batch
    window series_by_batch as (
        partition by series, json_merge_patch(to_json(config), '{"batch_size": null, "config_id": null}')
        order by config.batch_size
    )
),

-- The series' columns lead, then the batch size: `order by all` sorts by them.
final as (
    select
        config.* exclude (batch_size, optimizer, config_id),
        series,
        config.batch_size,
        trials,
        round(samples_per_s, 1) as samples_per_s,
        round(step_ms, 3) as step_ms,
        round(samples_per_s / nullif(base_samples_per_s, 0), 2) as throughput_x,
        round(100 * samples_per_s / nullif(base_samples_per_s, 0) / (config.batch_size / base_batch), 1)
            as efficiency_pct,
        round(activation_bytes / 2 ^ 20, 2) as activation_mib,
        round(peak_bytes / 2 ^ 20, 1) as peak_mib,
        round(peak_bytes / nullif(base_peak_bytes, 0), 2) as memory_x
    from with_base
    order by all
)

select * from final
