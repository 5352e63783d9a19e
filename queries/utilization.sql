-- How close each configuration came to what the hardware can do: achieved TFLOP/s, MFU and HFU, per step and per phase.
--
-- FLOPs come from an untimed counting pass (forward includes the loss; the
-- optimizer is not counted, as is usual for MFU). The conventions are PaLM's
-- (https://arxiv.org/abs/2204.02311, appendix B): model FLOPs = forward +
-- backward, without the forward that activation checkpointing recomputes;
-- hardware FLOPs = model FLOPs + that recompute. MFU = model FLOPs / step time /
-- peak; HFU = hardware FLOPs / step time / peak; they differ only with
-- checkpointing. step_tflops, hardware_step_tflops and MFU/HFU divide a step's
-- FLOPs by the mean measured step over the wall clock (trials.achieved_tflops,
-- trials.achieved_hardware_tflops: every step, outliers and gaps included);
-- step_tflops_p50 divides model FLOPs by the median step (step_ms_p50, as every
-- query's); unstable and outlier_steps are the trials' (trial_step_stats): a rate
-- of an unstable configuration is no result to compare. Phase rates divide
-- forward FLOPs by the median forward + loss ms and backward FLOPs (model, no
-- recompute) by the median backward ms. MFU and HFU are against the dense
-- datasheet peak of the exact GPU variant (null on a CPU or an unknown board)
-- and against the matmul peak measured on the node. Trials stored before
-- recompute was counted apart have null recompute and HFU. A configuration is
-- every parameter but the seed (config_id). A share above 1 is never shown
-- without a flag: mfu_flags lists its trials' distinct trials.mfu_flag values
-- (above_datasheet_peak: the count or the variant is wrong; above_measured_peak:
-- the step beat a measured peak that was just measured; within_peak_tolerance:
-- above the peak's median, within its fastest batch; measured_peak_remeasured:
-- the cached peak was too low and was measured again), flagged_trials counts them.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, workload, batch_size, precision, config_id, gpu_model, gpu_variant,
--   device_name, gflops_per_step, recompute_gflops_per_step, step_tflops,
--   hardware_step_tflops, step_tflops_p50, unstable, outlier_steps, forward_tflops,
--   backward_tflops, peak_tflops_datasheet,
--   peak_tflops_measured, mfu_datasheet, mfu_measured, hfu_datasheet, hfu_measured,
--   flagged_trials, mfu_flags (comma-separated, null when none)

with

chosen_trials as (
    select *
    from ok_trials
    where flops_forward is not null
        and in_sweep(sweep_id, $sweep)
),

-- Per trial: the median over its steps of forward + loss, and of backward.
phase_ms as (
    select
        s.sweep_id,
        s.trial_id,
        max(s.p50) filter (where s.metric = 'forward_loss') as forward_ms,
        max(s.p50) filter (where s.metric = 'backward') as backward_ms
    from ok_summaries as s
    inner join chosen_trials as t
        on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
    where s.metric in ('forward_loss', 'backward')
    group by s.sweep_id, s.trial_id
),

per_trial as (
    select
        t.*,
        -- FLOPs over milliseconds, / 1e9: TFLOP/s
        t.flops_forward / nullif(p.forward_ms, 0) / 1e9 as forward_tflops,
        t.flops_backward / nullif(p.backward_ms, 0) / 1e9 as backward_tflops,
        (t.flops_forward + t.flops_backward) / nullif(s.step_ms_p50, 0) / 1e9 as step_tflops_p50,
        s.unstable,
        s.outlier_steps
    from chosen_trials as t
    inner join phase_ms as p
        on p.sweep_id = t.sweep_id and p.trial_id = t.trial_id
    left join trial_step_stats as s
        on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
),

per_config as (
    select
        config,
        gpu_variant,
        median(flops_forward + flops_backward) as flops_per_step,
        median(flops_recompute) as recompute_flops_per_step,
        median(achieved_tflops) as step_tflops,
        median(achieved_hardware_tflops) as hardware_step_tflops,
        median(step_tflops_p50) as step_tflops_p50,
        bool_or(unstable) as unstable,
        sum(outlier_steps) as outlier_steps,
        median(forward_tflops) as forward_tflops,
        median(backward_tflops) as backward_tflops,
        max(peak_tflops_datasheet) as peak_tflops_datasheet,
        max(peak_tflops_measured) as peak_tflops_measured,
        median(mfu_datasheet) as mfu_datasheet,
        median(mfu_measured) as mfu_measured,
        median(hfu_datasheet) as hfu_datasheet,
        median(hfu_measured) as hfu_measured,
        count(mfu_flag) as flagged_trials,
        string_agg(distinct mfu_flag, ',' order by mfu_flag) as mfu_flags
    from per_trial
    group by config, gpu_variant
),

-- Unlike the other queries, this one shows the key without the optimizer (config_id
-- covers it) and with the board's variant before the device, and sorts without the
-- optimizer: so it spreads the key and orders by it field by field.
final as (
    select
        config.* exclude (optimizer, device_name),
        gpu_variant,
        config.device_name,
        round(flops_per_step / 1e9, 3) as gflops_per_step,
        round(recompute_flops_per_step / 1e9, 3) as recompute_gflops_per_step,
        round(step_tflops, 4) as step_tflops,
        round(hardware_step_tflops, 4) as hardware_step_tflops,
        round(step_tflops_p50, 4) as step_tflops_p50,
        unstable,
        outlier_steps,
        round(forward_tflops, 4) as forward_tflops,
        round(backward_tflops, 4) as backward_tflops,
        peak_tflops_datasheet,
        round(peak_tflops_measured, 4) as peak_tflops_measured,
        round(mfu_datasheet, 4) as mfu_datasheet,
        round(mfu_measured, 4) as mfu_measured,
        round(hfu_datasheet, 4) as hfu_datasheet,
        round(hfu_measured, 4) as hfu_measured,
        flagged_trials,
        mfu_flags
    from per_config
    order by
        config.sweep_id, config.workload, config.batch_size, config.precision, config.config_id, config.gpu_model,
        config.device_name
)

select * from final
