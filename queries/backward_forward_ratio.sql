-- How much longer backward takes than forward: median ms of each and their ratio, per configuration.
--
-- Measured (non-warmup) steps of ok trials only; each phase's figure is the median
-- over the configuration's trials (its repeats) of each trial's median
-- (trial_summaries). A ratio near 2 is the textbook expectation
-- for dense layers; far from it points at recomputation, hooks or a slow kernel.
-- A configuration is every parameter but the seed (config_id: depths, sequence
-- lengths and a custom workload's own keys count too), on one GPU type and device.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, workload, batch_size, precision, optimizer, config_id, gpu_model, device_name,
--   trials (ok trials), steps (their measured steps), forward_ms, backward_ms,
--   ratio (backward_ms / forward_ms)

with

chosen_phases as (
    select *
    from ok_summaries
    where in_sweep(sweep_id, $sweep)
        and metric in ('forward', 'backward')
),

config_medians as (
    select
        config,
        count(distinct trial_id) as trials,
        sum(steps) filter (where metric = 'forward') as steps,
        median(p50) filter (where metric = 'forward') as forward_ms,
        median(p50) filter (where metric = 'backward') as backward_ms
    from chosen_phases
    group by config
),

final as (
    select
        config.*,
        trials,
        steps,
        round(forward_ms, 3) as forward_ms,
        round(backward_ms, 3) as backward_ms,
        round(backward_ms / nullif(forward_ms, 0), 3) as ratio
    from config_medians
    order by config
)

select * from final
