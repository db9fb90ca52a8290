// The C API lands here.
