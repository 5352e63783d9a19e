-- One row per configuration: the median step and each phase's share of it, side by side.
--
-- The wide companion of phase_breakdown (which has one row per phase): the quickest
-- read of where a step's time goes. Measured (non-warmup) steps of ok trials; the
-- steps of a configuration's trials (its repeats) are pooled. Each share is the
-- phase's median over the sum of the six phases' medians (step_ms).
-- A configuration is every parameter but the seed (config_id: depths, sequence
-- lengths and a custom workload's own keys count too), on one GPU type and device.
--
-- param: sweep = latest  (a sweep_id, 'latest' for the newest sweep, or 'all')
--
-- columns: sweep_id, workload, batch_size, precision, optimizer, config_id, gpu, device_name,
--   step_ms (sum of phase medians), samples_per_s (median over trials),
--   data_pct, to_device_pct, forward_pct, loss_pct, backward_pct, optimizer_pct

with

chosen_trials as (
    select *
    from ok_trials
    where in_sweep(sweep_id, $sweep)
),

chosen_steps as (
    select *
    from measured_steps
    where in_sweep(sweep_id, $sweep)
),

phase_medians as (
    select
        config,
        phase,
        median(duration_ms) as median_ms
    from chosen_steps
    group by config, phase
),

throughput as (
    select
        config,
        median(samples_per_s) as samples_per_s
    from chosen_trials
    group by config
),

per_config as (
    select
        config,
        sum(median_ms) as step_ms,
        sum(median_ms) filter (where phase = 'data') as data_ms,
        sum(median_ms) filter (where phase = 'to_device') as to_device_ms,
        sum(median_ms) filter (where phase = 'forward') as forward_ms,
        sum(median_ms) filter (where phase = 'loss') as loss_ms,
        sum(median_ms) filter (where phase = 'backward') as backward_ms,
        sum(median_ms) filter (where phase = 'optimizer') as optimizer_ms
    from phase_medians
    group by config
),

-- The key's gpu is null for `gpus: any`: a struct compares equal field by field,
-- nulls included, so the join keeps those configurations.
with_throughput as (
    select *
    from per_config
    inner join throughput using (config)
),

final as (
    select
        config.*,
        round(step_ms, 3) as step_ms,
        round(samples_per_s, 1) as samples_per_s,
        round(100 * data_ms / nullif(step_ms, 0), 1) as data_pct,
        round(100 * to_device_ms / nullif(step_ms, 0), 1) as to_device_pct,
        round(100 * forward_ms / nullif(step_ms, 0), 1) as forward_pct,
        round(100 * loss_ms / nullif(step_ms, 0), 1) as loss_pct,
        round(100 * backward_ms / nullif(step_ms, 0), 1) as backward_pct,
        round(100 * optimizer_ms / nullif(step_ms, 0), 1) as optimizer_pct
    from with_throughput
    order by config
)

select * from final
