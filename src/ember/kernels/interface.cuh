// What a kernel family tells its Python wrapper, written once here in C++ and read back out of
// the family's PTX by scripts/build_kernels.py into manifest.json (ember.kernels.interface):
//  - EMBER_EXPORT_PARAMS(kernel): the kernel's parameter types, from its own declaration;
//  - EMBER_EXPORT_CONST(name, values...): ints the wrapper needs (tile sizes, stages...);
//  - EMBER_EXPORT_STRUCT(name, Type, fields...): the layout of a struct a kernel takes by
//    value, which a ctypes.Structure mirrors field for field on the Python side.
// Each becomes an initialised `.global` array in the PTX, named ember_params_<kernel>,
// ember_const_<name> and ember_struct_<name>{,_names,_types}; no kernel reads them.
#pragma once

#include <stddef.h>

#include <type_traits>

namespace ember {

// The name a by-value struct parameter is exported under (EMBER_EXPORT_STRUCT defines it); a
// struct without one does not compile as a parameter of an exported kernel.
template <typename T>
struct StructName;

// A parameter's type as ember.gpu.launch.Arg names it, or its struct's exported name.
template <typename T>
constexpr const char* arg_name() {
    if constexpr (std::is_pointer_v<T>) {
        return "PTR";
    } else if constexpr (std::is_same_v<T, float>) {
        return "F32";
    } else if constexpr (std::is_integral_v<T> && sizeof(T) == 4) {
        return std::is_signed_v<T> ? "I32" : "U32";
    } else if constexpr (std::is_integral_v<T> && sizeof(T) == 8) {
        return std::is_signed_v<T> ? "I64" : "U64";
    } else {
        static_assert(std::is_class_v<T>, "a parameter is a pointer, float, int32/64 or struct");
        return StructName<T>::value;
    }
}

// The names of A..., separated by spaces, as a character array in the PTX.
template <typename... A>
struct ArgNames {
    static constexpr int WIDTH = 24;  // per name, the separator included
    char text[sizeof...(A) * WIDTH + 1] = {};
    constexpr ArgNames() {
        const char* names[] = {arg_name<A>()..., ""};
        int at = 0;
        for (int i = 0; i < static_cast<int>(sizeof...(A)); ++i) {
            if (i) text[at++] = ' ';
            for (const char* c = names[i]; *c; ++c) text[at++] = *c;
        }
    }
};

template <typename Kernel>
struct KernelArgNames;
template <typename... A>
struct KernelArgNames<void(A...)> : ArgNames<A...> {};

// ArgNames of the field types after a leading `void` (EMBER_EXPORT_STRUCT's list starts so).
template <typename Void, typename... A>
struct FieldArgNames : ArgNames<A...> {};

// Whether fields listed by (offset, size) pairs cover [0, size) without a gap: every field of
// the struct is then listed, since an unlisted one would leave a gap (or make sizeof larger).
template <int N>
constexpr bool fields_tile(const int (&layout)[N]) {
    int end = 0;
    for (int i = 2; i < N; i += 2) {
        if (layout[i] != end) return false;
        end += layout[i + 1];
    }
    return end == layout[0];
}

}  // namespace ember

#define EMBER_CAT_(a, b) a##b
#define EMBER_CAT(a, b) EMBER_CAT_(a, b)
#define EMBER_COUNT_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, N, \
                     ...)                                                                        \
    N
#define EMBER_COUNT(...) \
    EMBER_COUNT_(__VA_ARGS__, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
// M(T, field) for each of up to 16 fields.
#define EMBER_EACH_1(M, T, F) M(T, F)
#define EMBER_EACH_2(M, T, F, ...) M(T, F) EMBER_EACH_1(M, T, __VA_ARGS__)
#define EMBER_EACH_3(M, T, F, ...) M(T, F) EMBER_EACH_2(M, T, __VA_ARGS__)
#define EMBER_EACH_4(M, T, F, ...) M(T, F) EMBER_EACH_3(M, T, __VA_ARGS__)
#define EMBER_EACH_5(M, T, F, ...) M(T, F) EMBER_EACH_4(M, T, __VA_ARGS__)
#define EMBER_EACH_6(M, T, F, ...) M(T, F) EMBER_EACH_5(M, T, __VA_ARGS__)
#define EMBER_EACH_7(M, T, F, ...) M(T, F) EMBER_EACH_6(M, T, __VA_ARGS__)
#define EMBER_EACH_8(M, T, F, ...) M(T, F) EMBER_EACH_7(M, T, __VA_ARGS__)
#define EMBER_EACH_9(M, T, F, ...) M(T, F) EMBER_EACH_8(M, T, __VA_ARGS__)
#define EMBER_EACH_10(M, T, F, ...) M(T, F) EMBER_EACH_9(M, T, __VA_ARGS__)
#define EMBER_EACH_11(M, T, F, ...) M(T, F) EMBER_EACH_10(M, T, __VA_ARGS__)
#define EMBER_EACH_12(M, T, F, ...) M(T, F) EMBER_EACH_11(M, T, __VA_ARGS__)
#define EMBER_EACH_13(M, T, F, ...) M(T, F) EMBER_EACH_12(M, T, __VA_ARGS__)
#define EMBER_EACH_14(M, T, F, ...) M(T, F) EMBER_EACH_13(M, T, __VA_ARGS__)
#define EMBER_EACH_15(M, T, F, ...) M(T, F) EMBER_EACH_14(M, T, __VA_ARGS__)
#define EMBER_EACH_16(M, T, F, ...) M(T, F) EMBER_EACH_15(M, T, __VA_ARGS__)
#define EMBER_EACH(M, T, ...) EMBER_CAT(EMBER_EACH_, EMBER_COUNT(__VA_ARGS__))(M, T, __VA_ARGS__)
#define EMBER_FIELD_LAYOUT_(T, F) , static_cast<int>(offsetof(T, F)), static_cast<int>(sizeof(T::F))
#define EMBER_FIELD_TYPE_(T, F) , decltype(T::F)

#define EMBER_EXPORT_PARAMS(KERNEL)                                                \
    extern "C" __device__ const ember::KernelArgNames<decltype(KERNEL)> ember_params_##KERNEL{};

#define EMBER_EXPORT_CONST(NAME, ...) \
    extern "C" __device__ const int ember_const_##NAME[] = {__VA_ARGS__};

// Size, alignment, then (offset, size) of each field in declaration order; the fields' names
// and types. List every field: the build fails on a gap, so give structs explicit padding.
#define EMBER_EXPORT_STRUCT(NAME, T, ...)                                                      \
    namespace ember {                                                                          \
    template <>                                                                                \
    struct StructName<T> {                                                                     \
        static constexpr const char* value = #NAME;                                            \
    };                                                                                         \
    }                                                                                          \
    extern "C" __device__ const int ember_struct_##NAME[] = {                                  \
        static_cast<int>(sizeof(T)),                                                           \
        static_cast<int>(alignof(T)) EMBER_EACH(EMBER_FIELD_LAYOUT_, T, __VA_ARGS__)};         \
    static_assert(ember::fields_tile(ember_struct_##NAME),                                     \
                  #T ": list every field, in order, and make padding an explicit field");      \
    extern "C" __device__ const char ember_struct_##NAME##_names[] = #__VA_ARGS__;             \
    extern "C" __device__ const ember::FieldArgNames<void EMBER_EACH(EMBER_FIELD_TYPE_, T,     \
                                                                     __VA_ARGS__)>             \
        ember_struct_##NAME##_types{};
