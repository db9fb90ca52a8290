# Smoke tests of the `sqa` program (target sqa_cli): `sqa info`, `sqa bench attention --json`
# with a check of every JSON field, option errors, and every subcommand's --help. The checker uses only Python's standard
# library.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  foreach(mode info bench decode errors help)
    add_test(NAME cli_${mode}
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/check_cli.py
                     $<TARGET_FILE:sqa_cli> ${mode} ${CMAKE_CURRENT_BINARY_DIR}/cli_${mode})
    set_tests_properties(cli_${mode} PROPERTIES TIMEOUT 300)
  endforeach()
else()
  message(WARNING "python3 not found: the sqa CLI smoke tests are not registered")
endif()
