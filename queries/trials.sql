-- One row per trial: how it ended, where it ran, how fast its steps were and how much they varied.
--
-- The step figures are intermediate.sql's trial_step_stats, the same in every
-- named query: over the trial's measured (non-warmup) steps that ran every
-- phase, each step's total the sum of its phases' duration_ms (an oom trial's
-- whole steps count too). step_ms_p50 is the median step; step_ms_p10 and
-- step_ms_p90 the 10th and 90th percentiles (quantile_cont); step_ms_cv the
-- standard deviation over the mean; outlier_steps those more than 3 scaled
-- MADs from the median (the rule is whole_steps.is_outlier; `stepscope sql
-- "select * from whole_steps where is_outlier"` lists them); unstable is
-- pyperf's check (sd above 10% of the mean, or a step 50% off the mean): do
-- not read a difference from such a trial without rerunning it. Two throughputs:
-- samples_per_s_p50 is the median step's (batch_size / step_ms_p50 * 1000);
-- samples_per_s is the wall clock's (batch_size * measured steps /
-- measured_wall_s: every step, and what ran between them). All null when the
-- trial measured no whole step (it failed early). error is cut to 80
-- characters on one line; the full text is in the trials view.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, trial_index, trial_id, repeat, status, error, workload,
--   batch_size, precision, optimizer, config_id, gpu, gpu_model, device_kind, device_name, host,
--   steps (whole measured steps), step_ms_p50, step_ms_p10, step_ms_p90, step_ms_cv,
--   outlier_steps, unstable, samples_per_s_p50 (of the median step),
--   samples_per_s (wall clock), model_to_device_ms, param_count

with

chosen_trials as (
    select *
    from trials
    where in_sweep(sweep_id, $sweep)
),

one_line_errors as (
    select * replace (regexp_replace(trim(error), '\s+', ' ', 'g') as error)
    from chosen_trials
),

final as (
    select
        t.sweep_id,
        t.trial_index,
        t.trial_id,
        t."repeat",
        t.status,
        case
            when length(t.error) > 80 then left(t.error, 79) || '…'
            else t.error
        end as error,
        t.workload,
        t.batch_size,
        t.precision,
        t.optimizer,
        t.config_id,
        t.gpu,
        t.gpu_model,
        t.device_kind,
        t.device_name,
        t.host,
        s.steps,
        round(s.step_ms_p50, 3) as step_ms_p50,
        round(s.step_ms_p10, 3) as step_ms_p10,
        round(s.step_ms_p90, 3) as step_ms_p90,
        round(s.step_ms_cv, 3) as step_ms_cv,
        s.outlier_steps,
        s.unstable,
        round(s.samples_per_s_p50, 1) as samples_per_s_p50,
        round(t.samples_per_s, 1) as samples_per_s,
        round(t.model_to_device_ms, 3) as model_to_device_ms,
        t.param_count
    from one_line_errors as t
    left join trial_step_stats as s
        on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
    left join sweeps as o
        on o.sweep_id = t.sweep_id
    order by o.created_at nulls last, t.sweep_id, t.trial_index, t."repeat"
)

select * from final
