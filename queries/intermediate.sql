-- The intermediate views: the joins and the configuration key the named queries
-- share, each written once.
--
-- The layers are dbt's (jaffle_shop_duckdb: models/staging, then marts): views.sql
-- is the staging layer (rename and cast the stored tables); this file joins and
-- keys them; each named query aggregates these views to answer one question.
-- It is a file of its own, loaded by stepscope.analysis.warehouse right after
-- views.sql, so that views.sql stays rename-and-cast only and each file is one
-- layer, read top to bottom. Not a named query: `stepscope query --list` skips it.
--
-- No view here picks a sweep: a view cannot take the `$sweep` parameter, so each
-- named query filters what it reads with in_sweep(sweep_id, $sweep), and
-- `sweep=latest` still means the newest sweep.

-- One row per trial that ended ok (an oom, a failed or a timed-out trial has no
-- figures to compare, nor has a nonfinite one: its loss went NaN or ±Inf, so it
-- timed a diverged run): every column of trials, and `config`, the configuration
-- key. A configuration is every parameter but the seed (config_id: depths,
-- sequence lengths and a custom workload's own keys count too), on one GPU type
-- and device, in one sweep; workload, batch_size, precision and optimizer are
-- there to be read. The key is one struct so that a query groups, partitions,
-- joins and orders by it whole (field by field, nulls last, as ordering by the
-- columns would) and spreads it into columns with `config.*`: a new key column
-- is added here, and every query that reports per configuration follows.
create or replace view ok_trials as
select
    *,
    struct_pack(sweep_id, workload, batch_size, precision, optimizer, config_id, gpu, device_name) as config
from trials
where status = 'ok';

-- One row per measured (non-warmup) step and phase of an ok trial, with the
-- trial's configuration key: what every per-configuration statistic is over.
create or replace view measured_steps as
select
    t.config,
    s.* exclude (is_warmup)
from steps as s
inner join ok_trials as t
    on t.sweep_id = s.sweep_id and t.trial_id = s.trial_id
where not s.is_warmup;

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
