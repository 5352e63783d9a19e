-- The report's heading: how many trials of the chosen sweeps ended in each status.
--
-- param: sweep  (what stepscope.analysis.sweeps.sql_value gives: 'all' or sweep ids, comma-separated)
-- columns: status, n
select status, count(*) as n from trials where in_sweep(sweep_id, $sweep) group by status
