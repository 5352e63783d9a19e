-- The report's phase plot: per configuration and metric ('step' or a phase), the median
-- over its ok trials of each trial's median (trial_summaries.p50), and what the interval
-- resamples, as `compare` does: the trials' medians with MIN_TRIALS trials or more, else the
-- block medians of all its trials (stepscope.analysis.stats).
--
-- param: sweep  (what stepscope.analysis.sweeps.sql_value gives: 'all' or sweep ids, comma-separated)
-- columns: sweep_id, config_id, gpu_model, device_name, metric, trials, p50, trial_p50, block_p50
select
    t.config.sweep_id, t.config.config_id, t.config.gpu_model, t.config.device_name,
    s.metric,
    count(*) as trials,
    median(s.p50) as p50,
    list(s.p50 order by t.trial_id) as trial_p50,
    flatten(list(s.block_p50 order by t.trial_id)) as block_p50
from ok_trials as t
inner join trial_summaries as s
    on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
where in_sweep(t.sweep_id, $sweep)
group by all
