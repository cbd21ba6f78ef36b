-- Segmentation: MatchCustomer reads one customer's events of a few names.
--
-- Through (customer_id, occurred_at) it had to fetch every event of the
-- customer in the period, whatever its name, each on its own heap page (the
-- heap follows time): on 10M events MatchCustomer of shape 5 had p90 10-19 ms
-- and p99 80-90 ms for customers not in cache. With this index the counts of
-- conditions without predicates are index-only and the first/last subqueries
-- stop at the first entry: p90 5-6 ms, p99 10-17 ms, same machine and load
-- (bench/segments.py data). 387 MB on 10M events; batched inserts measured no
-- slower within noise.
CREATE INDEX customer_events_by_customer_name
    ON customer_events (customer_id, name, occurred_at);
