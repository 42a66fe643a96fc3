"""What a run leaves on disk: the image and grade stores (store), the run's records and where every
file lives (records), atomic writes and hashes (files), and the locks that keep two writers apart
(locks). Nothing here generates or grades."""
