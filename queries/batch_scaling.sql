-- How throughput and memory grow with the batch size: samples/s, step time and peak memory per batch size, against the smallest batch of each series.
--
-- A series is one configuration with the batch size left free: every parameter
-- but batch_size and the seed (shown as a short hash, series), on one GPU type
-- and device. The step figures are intermediate.sql's config_step_stats, the
-- same in every named query: step_ms_p50 is the median (over trials) of the
-- median step, a step's total the sum of its phases' device time (no idle gaps
-- between phases); step_ms_p10..step_ms_p90 its spread over the pooled steps
-- (two batch sizes whose ranges overlap are within each other's noise);
-- unstable flags a configuration whose steps varied too much to compare
-- (pyperf's check). samples_per_s_p50 is the median step's throughput
-- (batch_size / step_ms_p50 * 1000); samples_per_s the median of the trials'
-- wall-clock throughput (batch_size * measured steps / measured_wall_s: on a
-- GPU it also pays for the gaps). throughput_x is samples_per_s_p50 over the
-- series' smallest batch's, so one slow step cannot move it; efficiency_pct is
-- throughput_x over the batch-size ratio (100: the step time did not grow at
-- all, the device had idle capacity; it falls as the device fills up).
-- peak_mib is the highest peak of a measured step: CUDA's allocated peak on a
-- GPU, the process's resident peak on a CPU; memory_x compares it with the
-- smallest batch's. Ok trials only.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, workload, precision, gpu_model, device_name, series, batch_size, trials,
--   samples_per_s_p50 (of the median step), samples_per_s (wall clock), step_ms_p50,
--   step_ms_p10, step_ms_p90, unstable, throughput_x, efficiency_pct, activation_mib,
--   peak_mib, memory_x

with

chosen_trials as (
    select
        *,
        md5(json_merge_patch(params, '{"batch_size": null, "seed": null}'))[:8] as series
    from ok_trials
    where in_sweep(sweep_id, $sweep)
),

-- A trial's 'step' summary holds the highest peaks over its whole measured steps.
per_trial as (
    select
        sweep_id,
        trial_id,
        coalesce(peak_allocated_bytes, peak_rss_bytes) as peak_bytes
    from ok_summaries
    where in_sweep(sweep_id, $sweep) and metric = 'step'
),

-- One row per configuration: a point of its series.
per_batch as (
    select
        t.config,
        t.series,
        median(t.activation_bytes) as activation_bytes,
        max(p.peak_bytes) as peak_bytes
    from chosen_trials as t
    inner join per_trial as p
        on p.sweep_id = t.sweep_id and p.trial_id = t.trial_id
    group by t.config, t.series
),

with_stats as (
    select *
    from per_batch
    inner join config_step_stats using (config)
),

-- A series is the configuration key with the batch size (and so the config_id)
-- left free: as JSON with those two fields dropped, it compares equal across
-- the series' batch sizes.
with_base as (
    select
        *,
        first_value(config.batch_size) over series_by_batch as base_batch,
        first_value(samples_per_s_p50) over series_by_batch as base_samples_per_s_p50,
        first_value(peak_bytes) over series_by_batch as base_peak_bytes
    from with_stats
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
        round(samples_per_s_p50, 1) as samples_per_s_p50,
        round(samples_per_s, 1) as samples_per_s,
        round(step_ms_p50, 3) as step_ms_p50,
        round(step_ms_p10, 3) as step_ms_p10,
        round(step_ms_p90, 3) as step_ms_p90,
        unstable,
        round(samples_per_s_p50 / nullif(base_samples_per_s_p50, 0), 2) as throughput_x,
        round(100 * samples_per_s_p50 / nullif(base_samples_per_s_p50, 0) / (config.batch_size / base_batch), 1)
            as efficiency_pct,
        round(activation_bytes / 2 ^ 20, 2) as activation_mib,
        round(peak_bytes / 2 ^ 20, 1) as peak_mib,
        round(peak_bytes / nullif(base_peak_bytes, 0), 2) as memory_x
    from with_base
    order by all
)

select * from final
