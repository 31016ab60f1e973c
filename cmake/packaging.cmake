# Installation layout and the Debian package (docs/operations.md,
# "Installing the package"):
#   <prefix>/bin/parleyd, <prefix>/bin/parley
#   <prefix>/share/parley/web/           the web client (parleyd's default
#                                         --web-root when installed: found
#                                         from the binary's location)
#   <prefix>/lib/systemd/system/parleyd.service
#   <sysconf>/parley/parleyd.toml, parleyd.env   (conffiles in the .deb)
#   <prefix>/share/doc/parley/            README.md, operations.md
# <sysconf> is /etc for the prefix /usr (the package), <prefix>/etc otherwise.
# `cpack -G DEB` (in the build tree) builds the .deb with prefix /usr;
# dependencies come from dpkg-shlibdeps.
include(GNUInstallDirs)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/web/ DESTINATION ${CMAKE_INSTALL_DATADIR}/parley/web)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/docs/operations.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/parley)

# The unit and the config files depend on the prefix given at install time
# (cmake --install --prefix, CPack's /usr), so they are written then.
install(CODE "
  set(PARLEY_BINDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}\")
  set(PARLEY_DOCDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_DATADIR}/doc/parley\")
  configure_file(\"${PROJECT_SOURCE_DIR}/packaging/parleyd.service.in\"
                 \"${PROJECT_BINARY_DIR}/packaging/parleyd.service\" @ONLY)
  if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
    set(_parley_etc \"/etc/parley\")
  else()
    set(_parley_etc \"\${CMAKE_INSTALL_PREFIX}/etc/parley\")
  endif()
  file(INSTALL DESTINATION \"\${_parley_etc}\" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"${PROJECT_SOURCE_DIR}/packaging/parleyd.toml\")
  file(INSTALL DESTINATION \"\${_parley_etc}\" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE
       FILES \"${PROJECT_SOURCE_DIR}/packaging/parleyd.env\")
  file(INSTALL DESTINATION \"\${CMAKE_INSTALL_PREFIX}/lib/systemd/system\" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"${PROJECT_BINARY_DIR}/packaging/parleyd.service\")
")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME parley)
set(CPACK_PACKAGE_VENDOR "Parley")
set(CPACK_PACKAGE_CONTACT "Parley maintainers <maintainers@parley.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Parley messaging server (parleyd), its web client and the parley CLI")
set(CPACK_PACKAGE_DESCRIPTION "parleyd serves the Parley protocol over WebSockets with a SQLite or PostgreSQL store, and the web client; parley is the command-line client. A systemd unit (parleyd.service) runs the server as a dynamic user.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
# Install with DESTDIR, so that the install code above sees the real prefix
# (/usr) and writes /etc/parley.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)  # with DESTDIR, the prefix the install code sees
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/packaging/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
