-- One row per configuration: the median step, its spread and outliers, the two throughputs, and each phase's share.
--
-- The wide companion of phase_breakdown (which has one row per phase): the quickest
-- read of where a step's time goes, and of how far to trust it. Measured
-- (non-warmup) steps of ok trials. A configuration is every parameter but the
-- seed (config_id: depths, sequence lengths and a custom workload's own keys
-- count too), on one GPU type and device; its trials are its repeats.
--
-- The step figures are intermediate.sql's config_step_stats, the same in every
-- named query: step_ms_p50 is the median over the trials of each trial's
-- median step (a step's total is the sum of its phases' duration_ms);
-- step_ms_p10, step_ms_p90 and step_ms_cv are over the trials' steps pooled
-- (quantile_cont; standard deviation over mean), so repeats that disagree
-- widen them. Two configurations are within each other's noise when their
-- step_ms_p10..step_ms_p90 ranges overlap: then neither is faster. outlier_steps
-- counts steps more than 3 scaled MADs from their trial's median; unstable is
-- pyperf's check on a trial (sd above 10% of the mean, a step 50% off the
-- mean) or step_ms_cv above 0.10. samples_per_s_p50 is the median step's
-- throughput (batch_size / step_ms_p50 * 1000); samples_per_s the median of the
-- trials' wall-clock throughput (batch_size * measured steps / measured_wall_s).
--
-- The shares are of phases_ms, the sum of the six phases' medians (each phase's
-- median over the trials of each trial's median, as phase_breakdown shows them), so they add up
-- to 100. phases_ms is not step_ms_p50: a sum of medians is not the median of
-- sums (the phases' slow steps need not be the same steps), and step_ms_p50 is
-- a median of trial medians; the two agree when the steps are steady, and a
-- gap between them is itself a sign of noise.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, workload, batch_size, precision, optimizer, config_id, gpu_model, device_name,
--   trials (ok trials), steps (whole measured steps, pooled), step_ms_p50, step_ms_p10,
--   step_ms_p90, step_ms_cv, outlier_steps, unstable, samples_per_s_p50 (of the median step),
--   samples_per_s (wall clock, median over trials), phases_ms (sum of phase medians),
--   data_pct, to_device_pct, forward_pct, loss_pct, backward_pct, optimizer_pct

with

chosen_phases as (
    select *
    from ok_phase_summaries
    where in_sweep(sweep_id, $sweep)
),

chosen_stats as (
    select *
    from config_step_stats
    where in_sweep(config.sweep_id, $sweep)
),

phase_medians as (
    select
        config,
        metric as phase,
        median(p50) as median_ms
    from chosen_phases
    group by config, metric
),

per_config as (
    select
        config,
        sum(median_ms) as phases_ms,
        sum(median_ms) filter (where phase = 'data') as data_ms,
        sum(median_ms) filter (where phase = 'to_device') as to_device_ms,
        sum(median_ms) filter (where phase = 'forward') as forward_ms,
        sum(median_ms) filter (where phase = 'loss') as loss_ms,
        sum(median_ms) filter (where phase = 'backward') as backward_ms,
        sum(median_ms) filter (where phase = 'optimizer') as optimizer_ms
    from phase_medians
    group by config
),

-- The key's gpu_model is null on a CPU with `gpus: any`: a struct compares equal field by field,
-- nulls included, so the join keeps those configurations.
with_stats as (
    select *
    from per_config
    inner join chosen_stats using (config)
),

final as (
    select
        config.*,
        trials,
        steps,
        round(step_ms_p50, 3) as step_ms_p50,
        round(step_ms_p10, 3) as step_ms_p10,
        round(step_ms_p90, 3) as step_ms_p90,
        round(step_ms_cv, 3) as step_ms_cv,
        outlier_steps,
        unstable,
        round(samples_per_s_p50, 1) as samples_per_s_p50,
        round(samples_per_s, 1) as samples_per_s,
        round(phases_ms, 3) as phases_ms,
        round(100 * data_ms / nullif(phases_ms, 0), 1) as data_pct,
        round(100 * to_device_ms / nullif(phases_ms, 0), 1) as to_device_pct,
        round(100 * forward_ms / nullif(phases_ms, 0), 1) as forward_pct,
        round(100 * loss_ms / nullif(phases_ms, 0), 1) as loss_pct,
        round(100 * backward_ms / nullif(phases_ms, 0), 1) as backward_pct,
        round(100 * optimizer_ms / nullif(phases_ms, 0), 1) as optimizer_pct
    from with_stats
    order by config
)

select * from final
