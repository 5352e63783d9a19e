-- One row per trial: how it ended, where it ran, and how fast its steps were.
--
-- median_step_ms is the median over the trial's measured (non-warmup) steps
-- that ran every phase, of the sum of their phases' duration_ms; null when it
-- measured none (a trial that failed early). error is cut to 80 characters on
-- one line; the full text is in the trials view.
--
-- param: sweep = latest  (a sweep_id, 'latest' for the newest sweep, or 'all')
--
-- columns: sweep_id, trial_index, trial_id, repeat, status, error, workload,
--   batch_size, precision, optimizer, config_id, gpu, device_kind, device_name, host,
--   samples_per_s, median_step_ms, model_to_device_ms, param_count

with

chosen_trials as (
    select *
    from trials
    where in_sweep(sweep_id, $sweep)
),

-- The most phases any step of the trial ran: a step with fewer was cut short.
whole_steps as (
    select *
    from step_totals
    where not is_warmup
    qualify phase_count = max(phase_count) over (partition by sweep_id, trial_id)
),

step_medians as (
    select
        sweep_id,
        trial_id,
        median(duration_ms) as median_step_ms
    from whole_steps
    group by sweep_id, trial_id
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
        t.device_kind,
        t.device_name,
        t.host,
        round(t.samples_per_s, 1) as samples_per_s,
        round(m.median_step_ms, 3) as median_step_ms,
        round(t.model_to_device_ms, 3) as model_to_device_ms,
        t.param_count
    from one_line_errors as t
    left join step_medians as m
        on m.sweep_id = t.sweep_id and m.trial_id = t.trial_id
    left join sweeps as o
        on o.sweep_id = t.sweep_id
    order by o.created_at nulls last, t.sweep_id, t.trial_index, t."repeat"
)

select * from final
