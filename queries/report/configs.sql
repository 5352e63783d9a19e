-- The report's configurations: one row per configuration of the chosen sweeps with a
-- whole measured step, its key spread into columns (config.*), then config_step_stats'
-- figures. Not a named query (the report reads it: stepscope.analysis.report.data).
--
-- param: sweep  (what stepscope.analysis.sweeps.sql_value gives: 'all' or sweep ids, comma-separated)
select config.*, * exclude (config) from config_step_stats where in_sweep(config.sweep_id, $sweep)
