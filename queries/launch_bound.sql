-- Where the GPU waits for the host: host against device time of forward and backward, and the GPU's idle gaps, per configuration.
--
-- On a GPU the host only launches kernels and runs ahead; the device works
-- through its queue. When the GPU is the bottleneck, host time of forward +
-- loss + backward is a fraction of their device time. When each kernel is done
-- before the host launches the next (small batches, small layers: thousands of
-- cores idle between launches), device time follows host time: host_device_ratio
-- near 1 or above, and launch_bound is true from $threshold on. gap_ms is the GPU
-- idle time between phases per step, from CUDA events: the host's work between
-- steps (the step's synchronisation, the loop, building the batch) and between
-- phases where the GPU had caught up; idle_pct is its share of the median step
-- plus gaps. step_ms_p50 is the median step of intermediate.sql's
-- config_step_stats, as in every named query (the median over trials of each
-- trial's median step, phases' device time summed), and unstable its flag
-- (pyperf's check: read no verdict from such a configuration without a rerun);
-- the other columns are medians over the configuration's ok CUDA trials of
-- each trial's median over its measured steps (trial_summaries; CPU trials
-- have no device to wait). A configuration is every
-- parameter but the seed (config_id).
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
-- param: threshold = 0.9  (host/device ratio of forward+loss+backward from which a configuration is launch bound)
--
-- columns: sweep_id, workload, batch_size, precision, optimizer, config_id, gpu_model, device_name,
--   trials, steps, step_ms_p50 (device, phases summed), unstable, gap_ms, idle_pct,
--   compute_device_ms, compute_host_ms (forward+loss+backward), host_device_ratio, launch_bound

with

chosen_trials as (
    select *
    from ok_trials
    where device_kind = 'cuda'
        and in_sweep(sweep_id, $sweep)
),

-- Per trial: the median over its steps of a step's summed idle gaps ('step'),
-- and of its forward + loss + backward device and host time ('compute').
per_trial as (
    select
        s.config,
        s.trial_id,
        max(s.steps) filter (where s.metric = 'step') as steps,
        max(s.gpu_gap_p50) filter (where s.metric = 'step') as gap_ms,
        max(s.p50) filter (where s.metric = 'compute') as compute_device_ms,
        max(s.host_p50) filter (where s.metric = 'compute') as compute_host_ms
    from ok_summaries as s
    inner join chosen_trials as t
        on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
    where s.metric in ('step', 'compute')
    group by s.config, s.trial_id
),

per_config as (
    select
        config,
        count(*) as trials,
        sum(steps) as steps,
        median(gap_ms) as gap_ms,
        median(compute_device_ms) as compute_device_ms,
        median(compute_host_ms) as compute_host_ms
    from per_trial
    group by config
),

with_stats as (
    select
        c.*,
        s.step_ms_p50,
        s.unstable
    from per_config as c
    inner join config_step_stats as s
        on s.config = c.config
),

final as (
    select
        config.*,
        trials,
        steps,
        round(step_ms_p50, 3) as step_ms_p50,
        unstable,
        round(gap_ms, 3) as gap_ms,
        round(100 * gap_ms / nullif(step_ms_p50 + gap_ms, 0), 1) as idle_pct,
        round(compute_device_ms, 3) as compute_device_ms,
        round(compute_host_ms, 3) as compute_host_ms,
        round(compute_host_ms / nullif(compute_device_ms, 0), 3) as host_device_ratio,
        compute_host_ms / nullif(compute_device_ms, 0) >= cast($threshold as double) as launch_bound
    from with_stats
    order by config
)

select * from final
