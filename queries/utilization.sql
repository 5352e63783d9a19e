-- How close each configuration came to what the hardware can do: achieved TFLOP/s and MFU, per step and per phase.
--
-- FLOPs come from an untimed counting pass (forward includes the loss; the
-- optimizer is not counted, as is usual for MFU). Step rates divide the step's
-- FLOPs by the mean measured step (trials.achieved_tflops); phase rates divide
-- forward FLOPs by the median forward + loss ms and backward FLOPs by the median
-- backward ms. MFU is against the dense datasheet peak of the exact GPU variant
-- (null on a CPU or an unknown board) and against the matmul peak measured on the
-- node. A configuration is every parameter but the seed (config_id).
--
-- param: sweep = latest  (a sweep_id, 'latest' for the newest sweep, or 'all')
--
-- columns: sweep_id, workload, batch_size, precision, config_id, gpu, gpu_variant,
--   device_name, gflops_per_step, step_tflops, forward_tflops, backward_tflops,
--   peak_tflops_datasheet, peak_tflops_measured, mfu_datasheet, mfu_measured

with

chosen_trials as (
    select *
    from trials
    where status = 'ok'
        and flops_forward is not null
        and in_sweep(sweep_id, $sweep)
),

step_phases as (
    select
        s.sweep_id,
        s.trial_id,
        s.iteration,
        sum(s.duration_ms) filter (where s.phase in ('forward', 'loss')) as forward_ms,
        sum(s.duration_ms) filter (where s.phase = 'backward') as backward_ms
    from steps as s
    inner join chosen_trials as t
        on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
    where not s.is_warmup
    group by s.sweep_id, s.trial_id, s.iteration
),

phase_ms as (
    select
        sweep_id,
        trial_id,
        median(forward_ms) as forward_ms,
        median(backward_ms) as backward_ms
    from step_phases
    group by sweep_id, trial_id
),

per_trial as (
    select
        t.*,
        -- FLOPs over milliseconds, / 1e9: TFLOP/s
        t.flops_forward / nullif(p.forward_ms, 0) / 1e9 as forward_tflops,
        t.flops_backward / nullif(p.backward_ms, 0) / 1e9 as backward_tflops
    from chosen_trials as t
    inner join phase_ms as p
        on p.sweep_id = t.sweep_id and p.trial_id = t.trial_id
),

final as (
    select
        sweep_id,
        workload,
        batch_size,
        precision,
        config_id,
        gpu,
        gpu_variant,
        device_name,
        round(median(flops_forward + flops_backward) / 1e9, 3) as gflops_per_step,
        round(median(achieved_tflops), 4) as step_tflops,
        round(median(forward_tflops), 4) as forward_tflops,
        round(median(backward_tflops), 4) as backward_tflops,
        max(peak_tflops_datasheet) as peak_tflops_datasheet,
        round(max(peak_tflops_measured), 4) as peak_tflops_measured,
        round(median(mfu_datasheet), 4) as mfu_datasheet,
        round(median(mfu_measured), 4) as mfu_measured
    from per_trial
    group by all
    order by sweep_id, workload, batch_size, precision, config_id, gpu, device_name
)

select * from final
