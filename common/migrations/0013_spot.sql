-- How a region's hosts are bought. Spot capacity costs a fraction of
-- on-demand but EC2 may refuse it, or take it back, at any time, so it is the
-- region's choice: 'on_demand' (what every region did before), 'spot' (spot
-- only: a refusal fails the launch and the next pass tries again) or
-- 'spot_with_fallback' (spot, else on-demand for the same type and subnet).
-- The local provider ignores it.
ALTER TABLE regions ADD COLUMN purchase text NOT NULL DEFAULT 'on_demand'
    CHECK (purchase IN ('on_demand', 'spot', 'spot_with_fallback'));
