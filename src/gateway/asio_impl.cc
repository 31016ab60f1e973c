// Boost.Asio (with its OpenSSL layer, for TLS) and Boost.Beast, compiled once for the whole project
// (BOOST_ASIO_SEPARATE_COMPILATION / BOOST_BEAST_SEPARATE_COMPILATION are set
// on every target that links parley_asio). Only the gateway, the SDK
// transport and, later, the network backends include Asio headers.
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
