// Test helper: a deep copy of a recurrent-state pool, so that two code paths can start from the same
// states and their pools be compared byte for byte afterwards.
#ifndef DELTASERVE_TESTS_SUPPORT_STATE_POOL_H_
#define DELTASERVE_TESTS_SUPPORT_STATE_POOL_H_

#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::testing {

inline kernels::RecurrentStatePool ClonePool(const kernels::RecurrentStatePool& pool) {
  kernels::RecurrentStatePool copy = pool;
  copy.values = pool.values.clone();
  if (pool.scales.defined()) copy.scales = pool.scales.clone();
  return copy;
}

}  // namespace deltaserve::testing

#endif  // DELTASERVE_TESTS_SUPPORT_STATE_POOL_H_
