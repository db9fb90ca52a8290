# Writes OUT (a header defining SQA_GIT_COMMIT) from the git commit of SRC. Runs at every build;
# rewrites OUT only when the text changes, so nothing recompiles needlessly. Uses read-only git
# plumbing only (no index refresh), so it never takes git's lock while someone commits.
set(ENV{GIT_OPTIONAL_LOCKS} 0)
set(commit "unknown")
find_package(Git QUIET)
if(GIT_FOUND)
  execute_process(COMMAND ${GIT_EXECUTABLE} -C ${SRC} rev-parse --short=12 HEAD
                  OUTPUT_VARIABLE head RESULT_VARIABLE head_rc OUTPUT_STRIP_TRAILING_WHITESPACE
                  ERROR_QUIET)
  if(head_rc EQUAL 0 AND head)
    set(commit "${head}")
    execute_process(COMMAND ${GIT_EXECUTABLE} -C ${SRC} diff-index --quiet HEAD --
                    RESULT_VARIABLE dirty_rc OUTPUT_QUIET ERROR_QUIET)
    if(NOT dirty_rc EQUAL 0)
      set(commit "${commit}-dirty")
    endif()
  endif()
endif()
set(text "#pragma once\n#define SQA_GIT_COMMIT \"${commit}\"\n")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
else()
  set(old "")
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
