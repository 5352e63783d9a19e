-- The report's devices section: the devices the chosen trials ran on, as last seen (the
-- devices view keeps one row each).
--
-- param: sweep  (what stepscope.analysis.sweeps.sql_value gives: 'all' or sweep ids, comma-separated)
select d.*
from devices as d
where d.device_uuid in (select device_uuid from trials where in_sweep(sweep_id, $sweep))
    or d.sweep_id in (select sweep_id from trials where in_sweep(sweep_id, $sweep))
order by d.device_kind, d.device_name, d.host, d.device_uuid
