-- Where a step's memory goes: parameters, gradients, optimizer state, activations, per-phase peaks and what torch does not see, per configuration.
--
-- The first five columns are measured from the tensors themselves: parameter
-- and gradient bytes, the optimizer's per-parameter state, what autograd saved
-- for backward (activations; the parameters and buffers it saved are the model's
-- state, not counted again), and the bf16/fp16 copies of weights that amp_*
-- casts and autograd saves (autocast_weight_mib: real memory, not activations;
-- null for trials stored before schema_version 2, whose activation_mib holds it). Peaks come from every measured step: on CUDA the caching allocator's
-- peak allocated and reserved bytes (reset at each phase), on a CPU the
-- process's peak resident memory; peak_phase is the first phase (in step order) that reached the
-- highest (allocated on CUDA, resident on a CPU). cuda_context_mib and non_torch_mib are NVML's view of what
-- the allocator cannot see (the CUDA context, library workspaces; scope
-- 'device' means NVML could only report the whole GPU's use). used_pct is the
-- peak reserved plus non-torch memory as a share of the device's capacity.
-- A configuration is every parameter but the seed (config_id); medians over its
-- ok trials, peaks are maxima. MiB = 2^20 bytes.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, workload, batch_size, precision, optimizer, config_id, gpu_model, device_name,
--   trials, param_mib, grad_mib, optimizer_state_mib, activation_mib, autocast_weight_mib, peak_allocated_mib,
--   peak_reserved_mib, peak_phase, peak_rss_mib, cuda_context_mib, non_torch_mib,
--   nvml_memory_scope, device_memory_mib, used_pct, alloc_retries

with

chosen_trials as (
    select *
    from ok_trials
    where in_sweep(sweep_id, $sweep)
),

-- Each phase's summary holds its highest peaks over the trial's whole measured steps.
chosen_phases as (
    select *
    from ok_phase_summaries
    where in_sweep(sweep_id, $sweep)
),

phase_peaks as (
    select
        sweep_id,
        trial_id,
        max(peak_allocated_bytes) as peak_allocated_bytes,
        max(peak_reserved_bytes) as peak_reserved_bytes,
        max(peak_rss_bytes) as peak_rss_bytes,
        -- The first phase in step order to reach the peak: a high-water mark (peak RSS
        -- on a CPU) stays at its peak in the phases after, so ties are the rule there.
        first(metric order by coalesce(peak_allocated_bytes, peak_rss_bytes) desc nulls last, phase_index)
            as peak_phase,
        first(phase_index order by coalesce(peak_allocated_bytes, peak_rss_bytes) desc nulls last, phase_index)
            as peak_phase_index
    from chosen_phases
    group by sweep_id, trial_id
),

per_trial as (
    select
        t.*,
        p.peak_allocated_bytes,
        p.peak_reserved_bytes,
        p.peak_rss_bytes,
        p.peak_phase,
        p.peak_phase_index
    from chosen_trials as t
    left join phase_peaks as p
        on p.sweep_id = t.sweep_id and p.trial_id = t.trial_id
),

per_config as (
    select
        config,
        count(*) as trials,
        median(param_bytes) as param_bytes,
        median(grad_bytes) as grad_bytes,
        median(optimizer_state_bytes) as optimizer_state_bytes,
        median(activation_bytes) as activation_bytes,
        median(autocast_weight_bytes) as autocast_weight_bytes,
        max(peak_allocated_bytes) as peak_allocated_bytes,
        max(peak_reserved_bytes) as peak_reserved_bytes,
        first(peak_phase order by coalesce(peak_allocated_bytes, peak_rss_bytes) desc nulls last, peak_phase_index)
            as peak_phase,
        max(peak_rss_bytes) as peak_rss_bytes,
        median(cuda_context_bytes) as cuda_context_bytes,
        median(non_torch_bytes) as non_torch_bytes,
        case when count(distinct nvml_memory_scope) > 1 then 'mixed' else max(nvml_memory_scope) end
            as nvml_memory_scope,
        max(device_memory_bytes) as device_memory_bytes,
        max(alloc_retries) as alloc_retries
    from per_trial
    group by config
),

final as (
    select
        config.*,
        trials,
        round(param_bytes / 2 ^ 20, 2) as param_mib,
        round(grad_bytes / 2 ^ 20, 2) as grad_mib,
        round(optimizer_state_bytes / 2 ^ 20, 2) as optimizer_state_mib,
        round(activation_bytes / 2 ^ 20, 2) as activation_mib,
        round(autocast_weight_bytes / 2 ^ 20, 2) as autocast_weight_mib,
        round(peak_allocated_bytes / 2 ^ 20, 1) as peak_allocated_mib,
        round(peak_reserved_bytes / 2 ^ 20, 1) as peak_reserved_mib,
        peak_phase,
        round(peak_rss_bytes / 2 ^ 20, 1) as peak_rss_mib,
        round(cuda_context_bytes / 2 ^ 20, 1) as cuda_context_mib,
        round(non_torch_bytes / 2 ^ 20, 1) as non_torch_mib,
        nvml_memory_scope,
        round(device_memory_bytes / 2 ^ 20, 0) as device_memory_mib,
        round(
            100 * (peak_reserved_bytes + coalesce(non_torch_bytes, 0)) / nullif(device_memory_bytes, 0), 1
        ) as used_pct,
        alloc_retries
    from per_config
    order by config
)

select * from final
