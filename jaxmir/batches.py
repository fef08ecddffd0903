"""How many patches one model call takes: the engines' batch sizes."""

# Patches per model call for runs of patches (MusiCNN: ~75 MB of activations; larger
# batches were not faster on CPU), and the largest run a live stream computes patch by patch
# instead: a padded batch of 8 costs about as much as 4 single patches. A file's last few
# patches go in a padded call all the same: the single-patch program would cost its process
# more to trace and compile (or read from the cache) than 1-4 patches' worth of padding.
BATCH = 8
SINGLE_LIMIT = 4
# A file's calls for a model with a heavy head (models.has_heavy_head), read at every call
# (VGGish's 67 M: ~3 ms of a patch's ~14 in calls of 8, Zen 4). The body still runs in steps
# of runner.CPU_STEP on a CPU; the 207-s WAV through VGGish took 2.85-2.91 s against 3.20-3.49.
HEAVY_HEAD_BATCH = 32
# The largest call: 4096 MusiCNN patches already hold ~38 GB of activations.
MAX_BATCH = 4096
