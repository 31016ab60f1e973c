// Boost.URL compiled into this library (its documented header-only use:
// Debian ships its headers, not a compiled libboost_url); used to read
// redis:// URLs (ParseRedisAddress).
#include <boost/url/src.hpp>
