#pragma once

// The writable layer of a sandbox as a filesystem of its own, so that its size is capped
// (`diskMb`): a sparse file formatted ext4 and mounted through a loop device, on which the
// sandbox's overlay keeps its upper and work directories. A sandbox that fills it gets ENOSPC;
// the host's disk and the other sandboxes' layers are not touched.
//
// Why this and not the alternatives: project quotas (ext4 `prjquota`, XFS `pquota`) need the
// data folder's filesystem mounted with them, which an operator's runner host rarely is (this
// one is not); a tmpfs would count against memory; overlayfs itself has no size limit. A loop
// filesystem works on any host with loop devices. Its cost per start is one mke2fs run and a
// mount (about 30-40 ms here, see README), paid before runc starts the container. The file is
// sparse and mounted with `discard`, so host disk is used only for what the sandbox holds.

#include <string>

#include "absl/status/status.h"

namespace isorun::runner {

// Creates `image` (size_mb MiB, sparse), formats it with its root directory owned by `owner`
// (uid and gid), and mounts it on the existing directory `mount_point` (nosuid, nodev). The loop
// device detaches by itself once the filesystem is unmounted.
absl::Status MountDiskLayer(const std::string& image, const std::string& mount_point, int size_mb,
                            uint32_t owner);

// Unmounts what MountDiskLayer mounted (lazily: a process still holding a file there does not
// block it). OK when nothing is mounted there.
absl::Status UnmountDiskLayer(const std::string& mount_point);

}  // namespace isorun::runner
