"""What a user runs, built on the engine and the storage: a search (runner), regenerating an image from
its record (regenerate), carrying old output folders over (migrate), the report (report), exports
(export), and what a run will cost before it starts (estimate)."""
