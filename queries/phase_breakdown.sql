-- Where a training step's time goes: median ms and share of each phase, per configuration.
--
-- Measured (non-warmup) steps of ok trials only. median_ms is the median over a
-- configuration's trials (its repeats) of each trial's median (trial_summaries:
-- read from a compacted store's summaries, not from its steps), as step_ms_p50
-- is everywhere; with one trial, that trial's median. share_pct is the phase's median over the sum
-- of the phases' medians, so the shares of a configuration add up to ~100. That
-- sum is phase_shares' phases_ms, not the median step (step_ms_p50 in
-- phase_shares and trials): a sum of medians is not the median of sums.
-- A configuration is every parameter but the seed (config_id: depths, sequence
-- lengths and a custom workload's own keys count too), on one GPU type and device.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, workload, batch_size, precision, optimizer, config_id, gpu_model, device_name,
--   phase_index, phase, trials (ok trials), steps (their measured steps),
--   median_ms (duration_ms), median_host_ms, share_pct

with

chosen_phases as (
    select *
    from ok_phase_summaries
    where in_sweep(sweep_id, $sweep)
),

phase_medians as (
    select
        config,
        phase_index,
        metric as phase,
        count(*) as trials,
        sum(steps) as steps,
        median(p50) as median_ms,
        median(host_p50) as median_host_ms
    from chosen_phases
    group by config, phase_index, metric
),

final as (
    select
        config.*,
        phase_index,
        phase,
        trials,
        steps,
        round(median_ms, 3) as median_ms,
        round(median_host_ms, 3) as median_host_ms,
        round(100 * median_ms / nullif(sum(median_ms) over (partition by config), 0), 1) as share_pct
    from phase_medians
    order by config, phase_index
)

select * from final
