# Finds the ONNX Runtime C/C++ API headers (the Python wheel ships none).
# Order: -DONNXRUNTIME_INCLUDE_DIR=... or the environment variable of that name; a system install;
# Debian's libonnxruntime-dev package (headers only, 85 KB), fetched into the build tree and
# unpacked without installing. Sets OSAL_ORT_INCLUDE_DIR, or leaves it empty and warns once.

set(OSAL_ORT_DEB_URL
    "http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
    CACHE STRING "Where to fetch Debian's libonnxruntime-dev package (ORT headers) from")
set(OSAL_ORT_DEB_SHA256 "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
    CACHE STRING "SHA-256 of that package; empty to skip the check")

function(_osal_unpack_deb deb dest)
  file(MAKE_DIRECTORY "${dest}/ar")
  execute_process(COMMAND ${CMAKE_COMMAND} -E tar xf "${deb}" WORKING_DIRECTORY "${dest}/ar"
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  file(GLOB data "${dest}/ar/data.tar.*")
  if(rc EQUAL 0 AND data)
    execute_process(COMMAND ${CMAKE_COMMAND} -E tar xf "${data}" WORKING_DIRECTORY "${dest}"
                    OUTPUT_QUIET ERROR_QUIET)
  endif()
endfunction()

function(osal_find_ort_headers)
  if(NOT ONNXRUNTIME_INCLUDE_DIR AND DEFINED ENV{ONNXRUNTIME_INCLUDE_DIR})
    set(ONNXRUNTIME_INCLUDE_DIR "$ENV{ONNXRUNTIME_INCLUDE_DIR}")
  endif()
  if(ONNXRUNTIME_INCLUDE_DIR)
    if(NOT EXISTS "${ONNXRUNTIME_INCLUDE_DIR}/onnxruntime_cxx_api.h")
      message(FATAL_ERROR "ONNXRUNTIME_INCLUDE_DIR=${ONNXRUNTIME_INCLUDE_DIR} has no onnxruntime_cxx_api.h")
    endif()
    set(OSAL_ORT_INCLUDE_DIR "${ONNXRUNTIME_INCLUDE_DIR}" PARENT_SCOPE)
    return()
  endif()
  find_path(_osal_sys_ort onnxruntime_cxx_api.h PATH_SUFFIXES onnxruntime onnxruntime/core/session)
  if(_osal_sys_ort)
    set(OSAL_ORT_INCLUDE_DIR "${_osal_sys_ort}" PARENT_SCOPE)
    return()
  endif()

  set(dest "${CMAKE_BINARY_DIR}/_deps/ort-headers")
  set(inc "${dest}/usr/include/onnxruntime")
  if(NOT EXISTS "${inc}/onnxruntime_cxx_api.h")
    set(deb "${dest}/libonnxruntime-dev.deb")
    if(OSAL_ORT_DEB_SHA256)
      set(hash EXPECTED_HASH "SHA256=${OSAL_ORT_DEB_SHA256}")
    endif()
    file(DOWNLOAD "${OSAL_ORT_DEB_URL}" "${deb}" ${hash} TIMEOUT 60 STATUS st)
    list(GET st 0 code)
    if(code EQUAL 0)
      _osal_unpack_deb("${deb}" "${dest}")
    else()
      # The pinned file may have left the pool after an update: ask apt for the current one.
      find_program(_osal_apt apt-get)
      if(_osal_apt)
        set(apt "${dest}/apt")
        file(MAKE_DIRECTORY "${apt}/lists/partial" "${apt}/cache/archives/partial")
        file(WRITE "${apt}/sources.list"
             "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n")
        set(opts -o "Dir::Etc::SourceList=${apt}/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                 -o "Dir::State::Lists=${apt}/lists" -o "Dir::Cache=${apt}/cache" -o "Debug::NoLocking=1")
        execute_process(COMMAND ${_osal_apt} ${opts} update OUTPUT_QUIET ERROR_QUIET TIMEOUT 120)
        execute_process(COMMAND ${_osal_apt} ${opts} download libonnxruntime-dev
                        WORKING_DIRECTORY "${dest}" OUTPUT_QUIET ERROR_QUIET TIMEOUT 120)
        file(GLOB debs "${dest}/libonnxruntime-dev_*.deb")
        if(debs)
          list(GET debs 0 deb)
          _osal_unpack_deb("${deb}" "${dest}")
        endif()
      endif()
    endif()
  endif()
  if(EXISTS "${inc}/onnxruntime_cxx_api.h")
    set(OSAL_ORT_INCLUDE_DIR "${inc}" PARENT_SCOPE)
  else()
    set(OSAL_ORT_INCLUDE_DIR "" PARENT_SCOPE)
  endif()
endfunction()
