fn main() -> std::process::ExitCode {
    ragctl::cli::main()
}
