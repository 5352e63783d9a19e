-- The intermediate views: the joins and the configuration key the named queries
-- share, each written once.
--
-- The layers are dbt's (jaffle_shop_duckdb: models/staging, then marts): views.sql
-- is the staging layer (the stored tables as the schema types them, committed
-- rows only); this file joins and keys them; each named query aggregates these
-- views to answer one question. It is a file of its own, loaded by
-- stepscope.analysis.warehouse right after views.sql, so that views.sql stays
-- staging only and each file is one layer, read top to bottom. Not a named
-- query: `stepscope query --list` skips it.
--
-- No view here picks a sweep: a view cannot take the `$sweep` parameter, so each
-- named query filters what it reads with in_sweep(sweep_id, $sweep), where
-- $sweep is what stepscope.analysis.sweeps resolved `-p sweep=` (or `--sweep`) to.

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
-- duration_ms (the six phases of stepscope.storage.schema.PHASES; a
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

-- The six phases in step order (stepscope.storage.schema.PHASES, which
-- tests/analysis/test_warehouse.py holds this to), for queries that read
-- per-phase summaries rather than step rows (which carry phase_index).
create or replace view phase_order as
select
    phase,
    cast(phase_index as integer) as phase_index
from (
    values ('data', 0), ('to_device', 1), ('forward', 2), ('loss', 3), ('backward', 4), ('optimizer', 5)
) as p (phase, phase_index);

-- Per-trial statistics of the measured steps: one row per trial (every status)
-- and metric, 'step' (a whole step's total), a phase, 'compute' (forward + loss +
-- backward) or 'forward_loss' (forward + loss), over the trial's whole measured
-- steps (those whole_steps keeps: every phase ran). Columns as
-- stepscope.storage.schema.SUMMARIES lists them:
--   steps              whole measured steps
--   p50, p10, p90      quantile_cont of duration_ms (ms): linear interpolation
--                      between the closest ranks (R's type 7, numpy's default)
--   mean, stddev       ms; stddev is the sample standard deviation (null with 1)
--   min, max           ms
--   outliers           steps beyond 3 scaled MADs of the median (whole_steps'
--                      rule, here applied to each metric's own durations)
--   block_p50          medians of consecutive blocks of L = ceil(cbrt(n)) steps in
--                      iteration order, n // L blocks, the last one taking the
--                      n mod L steps left over: the units a block bootstrap
--                      resamples (Kuensch, "The jackknife and the bootstrap for
--                      general stationary observations", Ann. Statist. 17(3),
--                      1989; L of order n^(1/3): Hall, Horowitz and Jing, "On
--                      blocking rules for the bootstrap with dependent data",
--                      Biometrika 82(3), 1995)
--   durations_ms       every step's duration_ms in iteration order ('step' only)
--   host_p50, gpu_gap_p50   medians of host_ms and gpu_gap_ms
--   peak_*_bytes       the highest peak in the metric's rows; alloc_retries summed
-- computed_summaries computes them from the steps of the trials with no stored
-- summary; `stepscope compact` stores the same rows (this SQL) for the trials
-- it compacts; trial_summaries reads both.
create or replace view computed_summaries as
with measured as (
    select
        *,
        count(*) over (partition by sweep_id, trial_id, iteration) as phase_count
    from unsummarized_steps
    where not is_warmup
),

phase_rows as (
    select
        sweep_id,
        trial_id,
        iteration,
        phase as metric,
        duration_ms,
        host_ms,
        gpu_gap_ms,
        peak_allocated_bytes,
        peak_reserved_bytes,
        peak_rss_bytes,
        alloc_retries
    from measured
    where phase_count = 6
),

-- Per step, its phases summed: the whole step ('step'), the device's compute
-- (forward, loss and backward: launch_bound's 'compute') and forward with its
-- loss (utilization's forward rate, 'forward_loss').
part_rows as (
    select
        sweep_id,
        trial_id,
        iteration,
        part.metric,
        sum(duration_ms) as duration_ms,
        sum(host_ms) as host_ms,
        sum(gpu_gap_ms) as gpu_gap_ms,
        max(peak_allocated_bytes) as peak_allocated_bytes,
        max(peak_reserved_bytes) as peak_reserved_bytes,
        max(peak_rss_bytes) as peak_rss_bytes,
        sum(alloc_retries) as alloc_retries
    from phase_rows
    inner join (
        select 'step' as metric, phase from phase_order
        union all
        select * from (
            values ('compute', 'forward'), ('compute', 'loss'), ('compute', 'backward'),
            ('forward_loss', 'forward'), ('forward_loss', 'loss')
        )
    ) as part (metric, phase)
        on part.phase = phase_rows.metric
    group by sweep_id, trial_id, iteration, part.metric
),

metric_rows as (
    select * from phase_rows
    union all
    select * from part_rows
),

ranked as (
    select
        *,
        row_number() over metric_steps as step_rank,
        count(*) over metric_all as n,
        median(duration_ms) over metric_all as metric_median_ms
    from metric_rows
    window
        metric_all as (partition by sweep_id, trial_id, metric),
        metric_steps as (partition by sweep_id, trial_id, metric order by iteration)
),

-- The block length: the least integer L with L^3 >= n (cbrt(27) is 3.0000000000000004
-- in floating point, so its ceil is not it; round, then step up if short).
sized as (
    select
        *,
        cast(round(cbrt(n)) as bigint) + (cast(round(cbrt(n)) as bigint) ^ 3 < n)::bigint as block_length
    from ranked
),

blocked as (
    select
        *,
        least((step_rank - 1) // block_length, n // block_length - 1) as block,
        abs(duration_ms - metric_median_ms) as deviation_ms,
        median(abs(duration_ms - metric_median_ms)) over (partition by sweep_id, trial_id, metric) as mad_ms
    from sized
),

blocks as (
    select
        sweep_id,
        trial_id,
        metric,
        list(block_median_ms order by block) as block_p50
    from (
        select
            sweep_id,
            trial_id,
            metric,
            block,
            median(duration_ms) as block_median_ms
        from blocked
        group by sweep_id, trial_id, metric, block
    )
    group by sweep_id, trial_id, metric
),

stats as (
    select
        sweep_id,
        trial_id,
        metric,
        cast(count(*) as integer) as steps,
        quantile_cont(duration_ms, 0.5) as p50,
        quantile_cont(duration_ms, 0.1) as p10,
        quantile_cont(duration_ms, 0.9) as p90,
        avg(duration_ms) as mean,
        stddev_samp(duration_ms order by iteration) as stddev,  -- ordered: the same bits whatever the files' order
        min(duration_ms) as min,
        max(duration_ms) as max,
        cast(count(*) filter (where deviation_ms > 3 * 1.4826 * mad_ms) as integer) as outliers,
        case when metric = 'step' then list(duration_ms order by iteration) end as durations_ms,
        median(host_ms) as host_p50,
        median(gpu_gap_ms) as gpu_gap_p50,
        max(peak_allocated_bytes) as peak_allocated_bytes,
        max(peak_reserved_bytes) as peak_reserved_bytes,
        max(peak_rss_bytes) as peak_rss_bytes,
        sum(alloc_retries) as alloc_retries
    from blocked
    group by sweep_id, trial_id, metric
)

select
    s.sweep_id,
    s.trial_id,
    s.metric,
    s.steps,
    s.p50,
    s.p10,
    s.p90,
    s.mean,
    s.stddev,
    s.min,
    s.max,
    s.outliers,
    b.block_p50,
    s.durations_ms,
    s.host_p50,
    s.gpu_gap_p50,
    s.peak_allocated_bytes,
    s.peak_reserved_bytes,
    s.peak_rss_bytes,
    s.alloc_retries
from stats as s
inner join blocks as b
    on b.sweep_id = s.sweep_id and b.trial_id = s.trial_id and b.metric = s.metric;

-- Every trial's summaries: the stored ones (summaries) and those computed from
-- the steps of trials with none (computed_summaries). A trial is in one or the
-- other, never both (the warehouse splits the step files so).
create or replace view trial_summaries as
select * from summaries
union all
select * from computed_summaries;

-- One row per ok trial and metric of trial_summaries, with the trial's
-- configuration key: what the named queries aggregate per configuration (the
-- median over its trials of each trial's median), reading a compacted store's
-- few summary rows per trial rather than its steps.
create or replace view ok_summaries as
select
    t.config,
    s.*
from trial_summaries as s
inner join ok_trials as t
    on t.sweep_id = s.sweep_id and t.trial_id = s.trial_id;

-- The phases' rows of ok_summaries (metric is a phase), with the phase's
-- phase_index: what the per-phase named queries read.
create or replace view ok_phase_summaries as
select
    s.*,
    p.phase_index
from ok_summaries as s
inner join phase_order as p
    on p.phase = s.metric;

-- One row per trial with a whole measured step (every status): THE per-trial
-- step statistics, which every named query shows under these names (the
-- 'step' row of trial_summaries, renamed):
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
        steps,
        p50 as step_ms_p50,
        p10 as step_ms_p10,
        p90 as step_ms_p90,
        mean as step_ms_mean,
        stddev / nullif(mean, 0) as step_ms_cv,
        min as step_ms_min,
        max as step_ms_max,
        outliers as outlier_steps
    from trial_summaries
    where metric = 'step'
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

-- The trials' whole steps pooled: each trial's 'step' summary keeps its steps'
-- totals (durations_ms, in iteration order), so no step row is read here; the
-- lists are joined in trial order, so the standard deviation is summed in one
-- order whatever the files'.
pooled as (
    select
        config,
        list_aggregate(step_ms, 'quantile_cont', 0.1) as step_ms_p10,
        list_aggregate(step_ms, 'quantile_cont', 0.9) as step_ms_p90,
        list_aggregate(step_ms, 'stddev_samp') / nullif(list_aggregate(step_ms, 'avg'), 0) as step_ms_cv
    from (
        select
            t.config,
            flatten(list(s.durations_ms order by s.sweep_id, s.trial_id)) as step_ms
        from trial_summaries as s
        inner join ok_trials as t
            on t.sweep_id = s.sweep_id and t.trial_id = s.trial_id
        where s.metric = 'step'
        group by t.config
    )
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
