-- The staging views every query and `stepscope sql` reads: only committed
-- trials' rows (steps, devices, summaries), one row per trial (its latest
-- attempt) and one per device (its latest sighting). The joins and keys the
-- named queries share are built on these, in intermediate.sql.
--
-- Built over raw_sweeps, raw_trials, raw_steps, raw_devices and raw_summaries,
-- which stepscope.analysis.warehouse registers with exactly the columns of
-- stepscope.storage.schema, in its order, each cast to its DuckDB type (null
-- where an older file lacks one; a file's extra columns never seen). So these
-- views name no column they pass through: a column added to the schema shows
-- here, with its type, in its place. Not a named query: `stepscope query --list`
-- skips this file.

create or replace view sweeps as
select * from raw_sweeps;

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

select * exclude (attempt_rank)
from by_attempt
where attempt_rank = 1;

-- A trial's trials row is written last and commits its steps file: steps
-- without one are an interrupted write, so the semi-join hides them.
-- committed_steps('raw_steps') is the steps view; the warehouse's
-- raw_steps_unsummarized (the steps of trials with no stored summary) goes
-- through the same rule as unsummarized_steps, below.
create or replace macro committed_steps(source) as table
select s.*
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

select * exclude (seen)
from latest
where seen = 1;

-- The stored per-trial summaries (`stepscope compact` writes them; one row per trial
-- and metric, as stepscope.storage.schema.SUMMARIES says), of committed
-- trials. The warehouse passes only rows of the current SUMMARY_VERSION (so the
-- column is left out), of trials whose compacted rows are the ones read.
create or replace view summaries as
select s.* exclude (summary_version)
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
