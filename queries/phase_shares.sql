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
    from trials
    where status = 'ok'
        and in_sweep(sweep_id, $sweep)
),

phase_medians as (
    select
        t.sweep_id,
        t.workload,
        t.batch_size,
        t.precision,
        t.optimizer,
        t.config_id,
        t.gpu,
        t.device_name,
        s.phase,
        median(s.duration_ms) as median_ms
    from chosen_trials as t
    inner join steps as s
        on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
    where not s.is_warmup
    group by all
),

throughput as (
    select
        sweep_id, workload, batch_size, precision, optimizer, config_id, gpu, device_name,
        median(samples_per_s) as samples_per_s
    from chosen_trials
    group by all
),

per_config as (
    select
        sweep_id, workload, batch_size, precision, optimizer, config_id, gpu, device_name,
        sum(median_ms) as step_ms,
        sum(median_ms) filter (where phase = 'data') as data_ms,
        sum(median_ms) filter (where phase = 'to_device') as to_device_ms,
        sum(median_ms) filter (where phase = 'forward') as forward_ms,
        sum(median_ms) filter (where phase = 'loss') as loss_ms,
        sum(median_ms) filter (where phase = 'backward') as backward_ms,
        sum(median_ms) filter (where phase = 'optimizer') as optimizer_ms
    from phase_medians
    group by all
),

final as (
    select
        c.sweep_id,
        c.workload,
        c.batch_size,
        c.precision,
        c.optimizer,
        c.config_id,
        c.gpu,
        c.device_name,
        round(c.step_ms, 3) as step_ms,
        round(tp.samples_per_s, 1) as samples_per_s,
        round(100 * c.data_ms / nullif(c.step_ms, 0), 1) as data_pct,
        round(100 * c.to_device_ms / nullif(c.step_ms, 0), 1) as to_device_pct,
        round(100 * c.forward_ms / nullif(c.step_ms, 0), 1) as forward_pct,
        round(100 * c.loss_ms / nullif(c.step_ms, 0), 1) as loss_pct,
        round(100 * c.backward_ms / nullif(c.step_ms, 0), 1) as backward_pct,
        round(100 * c.optimizer_ms / nullif(c.step_ms, 0), 1) as optimizer_pct
    from per_config as c
    inner join throughput as tp
        on tp.sweep_id = c.sweep_id
        and tp.workload = c.workload
        and tp.batch_size = c.batch_size
        and tp.precision = c.precision
        and tp.optimizer = c.optimizer
        and tp.config_id = c.config_id
        and tp.gpu is not distinct from c.gpu  -- null for `gpus: any`
        and tp.device_name is not distinct from c.device_name
    order by c.sweep_id, c.workload, c.batch_size, c.precision, c.optimizer, c.config_id, c.gpu, c.device_name
)

select * from final
