-- The staging views every query and `stepscope sql` reads: rename and cast, keep
-- only committed trials' rows (steps, devices), and one row per device (devices).
-- The joins and keys the named queries share are built on these, in
-- intermediate.sql.
--
-- Built over raw_sweeps, raw_trials, raw_steps and raw_devices, which
-- stepscope.analysis.warehouse registers with every column of
-- stepscope.storage.schema (null where an older file lacks one).
-- Columns are listed explicitly, so a file's extra or reordered columns never
-- change what a query sees. Not a named query: `stepscope query --list` skips
-- this file.

create or replace view sweeps as
select
    cast(sweep_id as varchar) as sweep_id,
    cast(name as varchar) as name,
    cast(spec as varchar) as spec,
    cast(spec_hash as varchar) as spec_hash,
    cast(spec_path as varchar) as spec_path,
    cast(created_at as timestamptz) as created_at,
    cast(trial_count as integer) as trial_count,
    cast(isolation as varchar) as isolation,
    cast(ray_address as varchar) as ray_address,
    cast(host as varchar) as host,
    cast(stepscope_version as varchar) as stepscope_version,
    cast(schema_version as integer) as schema_version
from raw_sweeps;

-- One row per trial of a sweep: should a file ever hold a trial twice, the latest
-- attempt wins (then the latest to end), as a retried trial's rewrite does.
create or replace view trials as
with by_attempt as (
    select
        *,
        row_number() over (
            partition by sweep_id, trial_id order by attempt desc nulls last, ended_at desc nulls last
        ) as attempt_rank
    from raw_trials
)

select
    cast(sweep_id as varchar) as sweep_id,
    cast(trial_id as varchar) as trial_id,
    cast(trial_index as integer) as trial_index,
    cast("repeat" as integer) as "repeat",
    cast(attempt as integer) as attempt,
    cast(status as varchar) as status,
    cast(error as varchar) as error,
    cast(workload as varchar) as workload,
    cast(batch_size as bigint) as batch_size,
    cast(precision as varchar) as precision,
    cast(optimizer as varchar) as optimizer,
    cast(iterations as integer) as iterations,
    cast(warmup as integer) as warmup,
    cast(seed as bigint) as seed,
    cast(params as varchar) as params,
    cast(config_id as varchar) as config_id,
    cast(gpu as varchar) as gpu,
    cast(gpu_model as varchar) as gpu_model,
    cast(device_kind as varchar) as device_kind,
    cast(device_name as varchar) as device_name,
    cast(device_index as integer) as device_index,
    cast(device_uuid as varchar) as device_uuid,
    cast(device_memory_bytes as bigint) as device_memory_bytes,
    cast(sm_count as integer) as sm_count,
    cast(compute_capability as varchar) as compute_capability,
    cast(driver_version as varchar) as driver_version,
    cast(cpu_count as integer) as cpu_count,
    cast(num_threads as integer) as num_threads,
    cast(host as varchar) as host,
    cast(node_id as varchar) as node_id,
    cast(pid as bigint) as pid,
    cast(python_version as varchar) as python_version,
    cast(torch_version as varchar) as torch_version,
    cast(cuda_version as varchar) as cuda_version,
    cast(cudnn_version as varchar) as cudnn_version,
    cast(started_at as timestamptz) as started_at,
    cast(ended_at as timestamptz) as ended_at,
    cast(model_to_device_ms as double) as model_to_device_ms,
    cast(param_count as bigint) as param_count,
    cast(measured_steps as integer) as measured_steps,
    cast(measured_wall_s as double) as measured_wall_s,
    cast(samples_per_s as double) as samples_per_s,
    cast(final_loss as double) as final_loss,
    cast(nonfinite_step as integer) as nonfinite_step,
    cast(unused_params as varchar) as unused_params,
    cast(flops_forward as bigint) as flops_forward,
    cast(flops_backward as bigint) as flops_backward,
    cast(flops_recompute as bigint) as flops_recompute,
    cast(flops_analytic as bigint) as flops_analytic,
    cast(flops_uncounted as varchar) as flops_uncounted,
    cast(flops_error as varchar) as flops_error,
    cast(flops_device as varchar) as flops_device,
    cast(achieved_tflops as double) as achieved_tflops,
    cast(achieved_hardware_tflops as double) as achieved_hardware_tflops,
    cast(gpu_variant as varchar) as gpu_variant,
    cast(peak_tflops_datasheet as double) as peak_tflops_datasheet,
    cast(peak_tflops_measured as double) as peak_tflops_measured,
    cast(mfu_datasheet as double) as mfu_datasheet,
    cast(mfu_measured as double) as mfu_measured,
    cast(hfu_datasheet as double) as hfu_datasheet,
    cast(hfu_measured as double) as hfu_measured,
    cast(mfu_flag as varchar) as mfu_flag,
    cast(param_bytes as bigint) as param_bytes,
    cast(grad_bytes as bigint) as grad_bytes,
    cast(optimizer_state_bytes as bigint) as optimizer_state_bytes,
    cast(activation_bytes as bigint) as activation_bytes,
    cast(autocast_weight_bytes as bigint) as autocast_weight_bytes,
    cast(alloc_retries as bigint) as alloc_retries,
    cast(cuda_context_bytes as bigint) as cuda_context_bytes,
    cast(nvml_used_bytes as bigint) as nvml_used_bytes,
    cast(non_torch_bytes as bigint) as non_torch_bytes,
    cast(nvml_memory_scope as varchar) as nvml_memory_scope,
    cast(sm_clock_mhz_min as integer) as sm_clock_mhz_min,
    cast(sm_clock_mhz_p50 as double) as sm_clock_mhz_p50,
    cast(mem_clock_mhz_p50 as double) as mem_clock_mhz_p50,
    cast(power_draw_w_p50 as double) as power_draw_w_p50,
    cast(power_draw_w_max as double) as power_draw_w_max,
    cast(temperature_c_max as integer) as temperature_c_max,
    cast(throttle_reasons as varchar) as throttle_reasons,
    cast(nvml_samples as integer) as nvml_samples,
    cast(stepscope_version as varchar) as stepscope_version,
    cast(schema_version as integer) as schema_version
from by_attempt
where attempt_rank = 1;

-- A trial's trials row is written last and commits its steps file: steps
-- without one are an interrupted write, so the semi-join hides them.
-- committed_steps('raw_steps') is the steps view; the warehouse's
-- raw_steps_unsummarized (the steps of trials with no stored summary) goes
-- through the same casts as unsummarized_steps, below.
create or replace macro committed_steps(source) as table
select
    cast(s.sweep_id as varchar) as sweep_id,
    cast(s.trial_id as varchar) as trial_id,
    cast(s.iteration as integer) as iteration,
    cast(s.is_warmup as boolean) as is_warmup,
    cast(s.phase as varchar) as phase,
    cast(s.phase_index as integer) as phase_index,
    cast(s.duration_ms as double) as duration_ms,
    cast(s.host_ms as double) as host_ms,
    cast(s.gpu_gap_ms as double) as gpu_gap_ms,
    cast(s.peak_rss_bytes as bigint) as peak_rss_bytes,
    cast(s.peak_allocated_bytes as bigint) as peak_allocated_bytes,
    cast(s.peak_reserved_bytes as bigint) as peak_reserved_bytes,
    cast(s.alloc_retries as bigint) as alloc_retries
from query_table(source) as s
where exists (
    select 1
    from raw_trials as t
    where t.sweep_id = s.sweep_id and t.trial_id = s.trial_id
);

create or replace view steps as
select * from committed_steps('raw_steps');

-- One row per device (device_uuid: NVML's UUID on a GPU, CPU-<host> on a CPU),
-- as last seen by a committed trial. Join with trials on device_uuid.
create or replace view devices as
with committed as (
    select d.*
    from raw_devices as d
    where exists (
        select 1
        from raw_trials as t
        where t.sweep_id = d.sweep_id and t.trial_id = d.trial_id
    )
),

latest as (
    select
        *,
        row_number() over (partition by device_uuid order by observed_at desc, sweep_id desc, trial_id desc) as seen
    from committed
)

select
    cast(sweep_id as varchar) as sweep_id,
    cast(trial_id as varchar) as trial_id,
    cast(device_uuid as varchar) as device_uuid,
    cast(observed_at as timestamptz) as observed_at,
    cast(device_kind as varchar) as device_kind,
    cast(device_name as varchar) as device_name,
    cast(gpu_variant as varchar) as gpu_variant,
    cast(device_memory_bytes as bigint) as device_memory_bytes,
    cast(sm_count as integer) as sm_count,
    cast(compute_capability as varchar) as compute_capability,
    cast(pci_bus_id as varchar) as pci_bus_id,
    cast(sm_clock_mhz as integer) as sm_clock_mhz,
    cast(mem_clock_mhz as integer) as mem_clock_mhz,
    cast(sm_clock_max_mhz as integer) as sm_clock_max_mhz,
    cast(mem_clock_max_mhz as integer) as mem_clock_max_mhz,
    cast(power_limit_w as double) as power_limit_w,
    cast(power_limit_default_w as double) as power_limit_default_w,
    cast(ecc_enabled as boolean) as ecc_enabled,
    cast(mig_enabled as boolean) as mig_enabled,
    cast(driver_version as varchar) as driver_version,
    cast(cuda_driver_version as varchar) as cuda_driver_version,
    cast(cuda_version as varchar) as cuda_version,
    cast(cudnn_version as varchar) as cudnn_version,
    cast(torch_version as varchar) as torch_version,
    cast(cpu_model as varchar) as cpu_model,
    cast(cpu_count as integer) as cpu_count,
    cast(host_memory_bytes as bigint) as host_memory_bytes,
    cast(host as varchar) as host,
    cast(node_id as varchar) as node_id,
    cast(nvml_unavailable as varchar) as nvml_unavailable
from latest
where seen = 1;

-- The stored per-trial summaries (`stepscope compact` writes them; one row per trial
-- and metric, as stepscope.storage.schema.SUMMARIES says), of committed
-- trials. The warehouse passes only rows of the current SUMMARY_VERSION, of trials
-- whose compacted rows are the ones read.
create or replace view summaries as
select
    cast(s.sweep_id as varchar) as sweep_id,
    cast(s.trial_id as varchar) as trial_id,
    cast(s.metric as varchar) as metric,
    cast(s.steps as integer) as steps,
    cast(s.p50 as double) as p50,
    cast(s.p10 as double) as p10,
    cast(s.p90 as double) as p90,
    cast(s.mean as double) as mean,
    cast(s.stddev as double) as stddev,
    cast(s.min as double) as min,
    cast(s.max as double) as max,
    cast(s.outliers as integer) as outliers,
    cast(s.block_p50 as double[]) as block_p50,
    cast(s.durations_ms as double[]) as durations_ms,
    cast(s.host_p50 as double) as host_p50,
    cast(s.gpu_gap_p50 as double) as gpu_gap_p50,
    cast(s.peak_allocated_bytes as bigint) as peak_allocated_bytes,
    cast(s.peak_reserved_bytes as bigint) as peak_reserved_bytes,
    cast(s.peak_rss_bytes as bigint) as peak_rss_bytes,
    cast(s.alloc_retries as bigint) as alloc_retries
from raw_summaries as s
where exists (
    select 1
    from raw_trials as t
    where t.sweep_id = s.sweep_id and t.trial_id = s.trial_id
);

-- The steps of the trials that have no stored summary (the warehouse's
-- raw_steps_unsummarized: those written since the last `stepscope compact`), as
-- `steps` shows them: what computed_summaries (intermediate.sql) summarises.
create or replace view unsummarized_steps as
select * from committed_steps('raw_steps_unsummarized');

-- The `sweep` parameter of every named query, as stepscope.analysis.sweeps (the one
-- resolver of ids, names, latest and all) hands it over: 'all', or the chosen sweep
-- ids joined by commas. It resolves nothing itself: in ad hoc SQL, give it ids.
-- Usage: where in_sweep(sweep_id, $sweep)
create or replace macro in_sweep(id, choice) as (
    choice = 'all' or list_contains(string_split(choice, ','), id)
);
