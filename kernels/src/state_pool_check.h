// The recurrent-state pool's rules for the entry points that take one (decode steps, ReadStates /
// WriteStates, the prefill in the pool): its shape, and where the slot indices must live.
#ifndef DELTASERVE_KERNELS_SRC_STATE_POOL_CHECK_H_
#define DELTASERVE_KERNELS_SRC_STATE_POOL_CHECK_H_

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "check.h"
#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::kernels::internal {

// values [slots, Hv, dk, dv]; scales [slots, Hv, dk] when the dtype is scaled.
absl::Status CheckPool(const RecurrentStatePool& pool);

// `slots` on the pool's device: as given when it already is, else uploaded from its host values.
at::Tensor SlotsOnPoolDevice(const RecurrentStatePool& pool, const at::Tensor& slots, const HostIndices& host);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_STATE_POOL_CHECK_H_
