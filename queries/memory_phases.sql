-- Memory phase by phase: the peak of each phase of a step, and on a GPU its share of the device's capacity, per configuration.
--
-- Peaks are reset at every phase boundary, so each phase's figure is its own
-- high-water mark: on CUDA the caching allocator's peak allocated and reserved
-- bytes, and the allocation retries it made in the phase (each a cache flush
-- and a retry: the sign of memory pressure); on every device the process's peak
-- resident memory. used_pct adds the memory torch does not see (the CUDA
-- context and others, from NVML after the measured steps) to the phase's peak
-- reserved and divides by the device's capacity. Maxima over the measured steps
-- of ok trials; a configuration is every parameter but the seed (config_id).
-- MiB = 2^20 bytes.
--
-- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')
--
-- columns: sweep_id, workload, batch_size, precision, optimizer, config_id, gpu_model, device_name,
--   phase_index, phase, peak_allocated_mib, peak_reserved_mib, peak_rss_mib, alloc_retries, used_pct

with

-- Each phase's summary holds its highest peaks over the trial's whole measured
-- steps, and its allocator retries summed.
chosen_phases as (
    select *
    from ok_phase_summaries
    where in_sweep(sweep_id, $sweep)
),

per_phase as (
    select
        s.config,
        s.phase_index,
        s.metric as phase,
        max(s.peak_allocated_bytes) as peak_allocated_bytes,
        max(s.peak_reserved_bytes) as peak_reserved_bytes,
        max(s.peak_rss_bytes) as peak_rss_bytes,
        sum(s.alloc_retries) as alloc_retries,
        max(t.non_torch_bytes) as non_torch_bytes,
        max(t.device_memory_bytes) as device_memory_bytes
    from chosen_phases as s
    inner join ok_trials as t
        on t.sweep_id = s.sweep_id and t.trial_id = s.trial_id
    group by s.config, s.phase_index, s.metric
),

final as (
    select
        config.*,
        phase_index,
        phase,
        round(peak_allocated_bytes / 2 ^ 20, 1) as peak_allocated_mib,
        round(peak_reserved_bytes / 2 ^ 20, 1) as peak_reserved_mib,
        round(peak_rss_bytes / 2 ^ 20, 1) as peak_rss_mib,
        alloc_retries,
        round(
            100 * (peak_reserved_bytes + coalesce(non_torch_bytes, 0)) / nullif(device_memory_bytes, 0), 1
        ) as used_pct
    from per_phase
    order by config, phase_index
)

select * from final
