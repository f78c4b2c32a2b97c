-- Nothing to restore: the removed tool never ran.
SELECT 1;
