-- The intermediate views: the joins and the configuration key the named queries
-- share, each written once.
--
-- The layers are dbt's (jaffle_shop_duckdb: models/staging, then marts): views.sql
-- is the staging layer (rename and cast the stored tables); this file joins and
-- keys them; each named query aggregates these views to answer one question.
-- It is a file of its own, loaded by stepscope.analysis.warehouse right after
-- views.sql, so that views.sql stays rename-and-cast only and each file is one
-- layer, read top to bottom. Not a named query: `stepscope query --list` skips it.
--
-- No view here picks a sweep: a view cannot take the `$sweep` parameter, so each
-- named query filters what it reads with in_sweep(sweep_id, $sweep), and
-- `sweep=latest` still means the newest sweep.

-- One row per trial that ended ok (an oom, a failed or a timed-out trial has no
-- figures to compare, nor has a nonfinite one: its loss went NaN or ±Inf, so it
-- timed a diverged run): every column of trials, and `config`, the configuration
-- key. A configuration is every parameter but the seed (config_id: depths,
-- sequence lengths and a custom workload's own keys count too), on one GPU model
-- and device, in one sweep. The GPU model is the node's (`gpu_model`: what the
-- board is, whatever name the spec asked for it by, so `gpus: [A100]` and
-- `gpus: each` group one board together), else the requested type (`gpu`: a
-- `stepscope trial --gpu`, outside Ray); workload, batch_size, precision and optimizer are
-- there to be read. The key is one struct so that a query groups, partitions,
-- joins and orders by it whole (field by field, nulls last, as ordering by the
-- columns would) and spreads it into columns with `config.*`: a new key column
-- is added here, and every query that reports per configuration follows.
create or replace view ok_trials as
select
    *,
    struct_pack(sweep_id, workload, batch_size, precision, optimizer, config_id,
                gpu_model := coalesce(gpu_model, gpu), device_name) as config
from trials
where status = 'ok';

-- One row per trial and step (warmup too, every status), its phases summed.
-- phase_count tells a whole step (every phase) from one cut short by an error.
create or replace view step_totals as
select
    sweep_id,
    trial_id,
    iteration,
    is_warmup,
    sum(duration_ms) as duration_ms,
    sum(host_ms) as host_ms,
    sum(gpu_gap_ms) as gpu_gap_ms,
    count(*) as phase_count
from steps
group by sweep_id, trial_id, iteration, is_warmup;

-- One row per measured (non-warmup) step that ran every phase, of every trial
-- (an oom trial's whole steps too): step_ms is the sum of its six phases'
-- duration_ms (the six phases of stepscope.workloads.storage.schema.PHASES; a
-- step with fewer was cut short by an error and is no step to time).
--
-- is_outlier is THE outlier rule, the only one: a step whose total is more
-- than 3 scaled MADs from its trial's median step, |step_ms - median| >
-- 3 * 1.4826 * MAD, MAD = median(|step_ms - median|) over the trial's whole
-- measured steps. That is the Hampel identifier as Leys et al. recommend it
-- ("Detecting outliers: do not use standard deviation around the mean, use
-- absolute deviation around the median", J. Exp. Soc. Psychol. 49(4), 2013,
-- https://doi.org/10.1016/j.jesp.2013.03.013): 1.4826 makes the MAD estimate a
-- normal distribution's standard deviation, and 3 is their "very conservative"
-- threshold. The median and MAD ignore up to half the steps, so a planted 100x
-- step cannot hide itself by inflating the spread (as it would a mean ± 3 sd
-- rule, or Tukey's IQR fences over fewer than 5 steps). When more than half of
-- a trial's steps are equal the MAD is 0 and every other step is an outlier.
create or replace view whole_steps as
with whole as (
    select
        sweep_id,
        trial_id,
        iteration,
        duration_ms as step_ms,
        host_ms,
        gpu_gap_ms,
        median(duration_ms) over trial as trial_median_ms
    from step_totals
    where not is_warmup and phase_count = 6
    window trial as (partition by sweep_id, trial_id)
),

with_mad as (
    select
        *,
        median(abs(step_ms - trial_median_ms)) over (partition by sweep_id, trial_id) as trial_mad_ms
    from whole
)

select
    sweep_id,
    trial_id,
    iteration,
    step_ms,
    host_ms,
    gpu_gap_ms,
    abs(step_ms - trial_median_ms) > 3 * 1.4826 * trial_mad_ms as is_outlier
from with_mad;

-- One row per measured (non-warmup) step and phase of an ok trial, with the
-- trial's configuration key: what every per-configuration statistic is over.
-- is_outlier is the step's (whole_steps: every phase of an outlier step is
-- flagged); null for a step cut short.
create or replace view measured_steps as
select
    t.config,
    s.* exclude (is_warmup),
    w.is_outlier
from steps as s
inner join ok_trials as t
    on t.sweep_id = s.sweep_id and t.trial_id = s.trial_id
left join whole_steps as w
    on w.sweep_id = s.sweep_id and w.trial_id = s.trial_id and w.iteration = s.iteration
where not s.is_warmup;

-- One row per trial with a whole measured step (every status): THE per-trial
-- step statistics, which every named query shows under these names.
--   steps              whole measured steps (whole_steps)
--   step_ms_p50        the median step: median of the steps' totals, ms
--   step_ms_p10, _p90  their 10th and 90th percentiles, quantile_cont (linear
--                      interpolation between the closest ranks: R's type 7,
--                      Python's statistics.quantiles(method='inclusive'))
--   step_ms_mean       their mean, ms
--   step_ms_cv         coefficient of variation: sample standard deviation over
--                      the mean (null with one step)
--   outlier_steps      steps whose is_outlier is true
--   samples_per_s_p50  throughput of the median step: batch_size / step_ms_p50
--                      * 1000. trials.samples_per_s is another figure: the
--                      wall-clock rate, batch_size * measured_steps /
--                      measured_wall_s, which also pays for what runs between
--                      phases and steps (on a GPU, its idle gaps)
--   unstable           pyperf's stability check would warn (`pyperf check`,
--                      https://pyperf.readthedocs.io/en/latest/cli.html):
--                      the standard deviation is more than 10% of the mean, or
--                      the slowest step is more than 50% above the mean or the
--                      fastest more than 50% below it. A step 100x the median
--                      trips it whatever the step count.
create or replace view trial_step_stats as
with per_trial as (
    select
        sweep_id,
        trial_id,
        count(*) as steps,
        quantile_cont(step_ms, 0.5) as step_ms_p50,
        quantile_cont(step_ms, 0.1) as step_ms_p10,
        quantile_cont(step_ms, 0.9) as step_ms_p90,
        avg(step_ms) as step_ms_mean,
        stddev_samp(step_ms) / nullif(avg(step_ms), 0) as step_ms_cv,
        min(step_ms) as step_ms_min,
        max(step_ms) as step_ms_max,
        count(*) filter (where is_outlier) as outlier_steps
    from whole_steps
    group by sweep_id, trial_id
)

select
    p.sweep_id,
    p.trial_id,
    p.steps,
    p.step_ms_p50,
    p.step_ms_p10,
    p.step_ms_p90,
    p.step_ms_mean,
    p.step_ms_cv,
    p.step_ms_min,
    p.step_ms_max,
    p.outlier_steps,
    t.batch_size * 1000 / nullif(p.step_ms_p50, 0) as samples_per_s_p50,
    -- Null (not false: not "stable") when fewer than 2 steps leave nothing to judge.
    case when p.steps < 2 then null else
        coalesce(p.step_ms_cv > 0.10, false)
        or p.step_ms_max > 1.5 * p.step_ms_mean
        or p.step_ms_min < 0.5 * p.step_ms_mean
    end as unstable
from per_trial as p
inner join trials as t
    on t.sweep_id = p.sweep_id and t.trial_id = p.trial_id;

-- One row per configuration (ok trials with a whole measured step): the same
-- figures, over its trials (repeats, seeds).
--   trials             ok trials
--   steps              their whole measured steps, pooled
--   step_ms_p50        the median of the trials' step_ms_p50
--   step_ms_p10, _p90  quantile_cont of the pooled steps' totals: the spread of
--                      one step, repeat-to-repeat differences included. Two
--                      configurations are within each other's noise when these
--                      ranges overlap (a.step_ms_p10 <= b.step_ms_p90 and
--                      b.step_ms_p10 <= a.step_ms_p90)
--   step_ms_cv         sample standard deviation over mean of the pooled steps
--   outlier_steps      the trials' outlier_steps summed (each step judged
--                      against its own trial)
--   samples_per_s_p50  batch_size / step_ms_p50 * 1000, from this row's median
--   samples_per_s      the median of the trials' wall-clock samples_per_s
--   unstable           a trial is unstable, or the pooled steps fail pyperf's
--                      10% check (step_ms_cv > 0.10: the repeats disagree)
create or replace view config_step_stats as
with per_trial as (
    select
        t.config,
        t.samples_per_s,
        s.*
    from ok_trials as t
    inner join trial_step_stats as s
        on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
),

trial_figures as (
    select
        config,
        count(*) as trials,
        sum(steps) as steps,
        median(step_ms_p50) as step_ms_p50,
        sum(outlier_steps) as outlier_steps,
        median(samples_per_s) as samples_per_s,
        bool_or(unstable) as any_unstable
    from per_trial
    group by config
),

pooled as (
    select
        t.config,
        quantile_cont(w.step_ms, 0.1) as step_ms_p10,
        quantile_cont(w.step_ms, 0.9) as step_ms_p90,
        stddev_samp(w.step_ms) / nullif(avg(w.step_ms), 0) as step_ms_cv
    from whole_steps as w
    inner join ok_trials as t
        on t.sweep_id = w.sweep_id and t.trial_id = w.trial_id
    group by t.config
)

-- The key's gpu_model is null on a CPU with `gpus: any`: a struct compares equal field by field,
-- nulls included, so the join keeps those configurations.
select
    f.config,
    f.trials,
    f.steps,
    f.step_ms_p50,
    p.step_ms_p10,
    p.step_ms_p90,
    p.step_ms_cv,
    f.outlier_steps,
    f.config.batch_size * 1000 / nullif(f.step_ms_p50, 0) as samples_per_s_p50,
    f.samples_per_s,
    f.any_unstable or coalesce(p.step_ms_cv > 0.10, false) as unstable
from trial_figures as f
inner join pooled as p
    on p.config = f.config;
