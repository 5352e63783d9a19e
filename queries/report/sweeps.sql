-- The report's sweep specs section: the chosen sweeps' rows, oldest first.
--
-- param: sweep  (what stepscope.analysis.sweeps.sql_value gives: 'all' or sweep ids, comma-separated)
select * from sweeps where in_sweep(sweep_id, $sweep) order by created_at, sweep_id
